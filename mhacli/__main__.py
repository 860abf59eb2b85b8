from mhacli.cli import main

main()
