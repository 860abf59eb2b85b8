"""`python -m mhacli` and the `mha` console script.

Ctrl-C while the modules are still loading also ends with one `error:` line and exit 130, like Ctrl-C anywhere later
(mhacli.cli.run).
"""

import sys


def entry() -> None:
    try:
        from mhacli.cli import main
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    main()


if __name__ == "__main__":
    entry()
