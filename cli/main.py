"""`llmesh`: the operator command line."""
import typer

app = typer.Typer(help="llmesh operator commands", no_args_is_help=True)
