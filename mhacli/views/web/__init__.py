"""Resources of the HTML page (--save FILE.html): page.js and page.css, inlined by mhacli.views.page."""
