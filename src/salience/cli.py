"""The `salience` command. It only parses arguments and calls the library."""

import typer

app = typer.Typer(help="Explain and guide image classifiers with salience maps.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the installed version."""
    from salience import __version__

    typer.echo(__version__)
