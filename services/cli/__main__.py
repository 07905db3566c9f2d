"""`python -m services.cli`: run the `talkinghead` command."""

from services.cli import app

if __name__ == "__main__":
    app()
