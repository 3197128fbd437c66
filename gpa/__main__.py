"""``python -m gpa``: the same command line as the ``gpa`` script."""

from gpa.cli import main

if __name__ == "__main__":
    main()
