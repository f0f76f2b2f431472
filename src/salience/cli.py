"""The `salience` command. It only parses arguments and calls the library."""

import typer

app = typer.Typer(help="Explain and guide image classifiers with salience maps.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the installed version."""
    from salience import __version__

    typer.echo(__version__)


@app.command()
def explain(
    checkpoint: str = typer.Option(..., help="Training checkpoint (.pt) whose model is explained."),
    data: str = typer.Option("test", help="Split of the checkpoint's data config to explain."),
    method: str = typer.Option(..., help="Attribution method (gradient, input_x_gradient, grad_cam, ...)."),
    layer: str = typer.Option(None, help="Layer name or named depth (input, mid1.., final)."),
    out: str = typer.Option(..., help="Map store directory (created, or resumed if its metadata match)."),
    target: str = typer.Option("true", help="Class to explain: true, predicted or class:<k>."),
    chunk_size: int = typer.Option(256, min=1, help="Images per store chunk."),
    batch_size: int = typer.Option(64, min=1),
    device: str = typer.Option("cpu"),
    set_: list[str] = typer.Option([], "--set", help="key=value override of the saved config (repeatable)."),
) -> None:
    """Write salience maps of a checkpoint on a data split into a resumable map store."""
    from salience.store.explain import explain_checkpoint

    store = explain_checkpoint(checkpoint, data, method, out, layer=layer, target_policy=target, overrides=set_,
                               chunk_size=chunk_size, batch_size=batch_size, device=device, progress=True)
    typer.echo(f"{store.path}: {store.n} maps {store.map_shape}, complete={store.is_complete()}")


@app.command()
def measure(
    stores: list[str] = typer.Option([], "--stores", help="Map stores, one group 'all' (repeatable)."),
    group: list[str] = typer.Option([], "--group", help="NAME=STORE,STORE,... (repeatable); groups are compared."),
    out: str = typer.Option(..., help="Output directory for per_image.csv, stability.csv, summary.json."),
    seed: int = typer.Option(0, help="Seed of the bootstrap CIs and permutation tests."),
) -> None:
    """Entropy per image, stability across models and group comparisons from map stores."""
    from salience.measures.run import measure_stores

    groups: dict[str, list[str]] = {}
    for spec in group:
        name, sep, paths = spec.partition("=")
        if not sep or not name or not paths:
            raise typer.BadParameter(f"--group {spec!r}: expected NAME=STORE,STORE,...")
        groups[name] = [p for p in paths.split(",") if p]
    if stores:
        groups.setdefault("all", []).extend(stores)
    if not groups:
        raise typer.BadParameter("give --stores or --group")
    summary = measure_stores(groups, out, seed=seed)
    typer.echo(f"{out}: {len(summary['stores'])} stores measured, {len(summary['comparisons'])} comparisons")
