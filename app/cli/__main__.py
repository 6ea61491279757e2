"""``python -m app.cli``: the ``conveyor`` command without the console script."""

from app.cli import main

if __name__ == "__main__":
    main()
