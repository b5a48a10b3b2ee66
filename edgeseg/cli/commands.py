"""Registers every command module on the app (heavy imports stay inside the commands)."""
from __future__ import annotations

import typer

from .bench_cmd import bench
from .build_cmd import build
from .data_cmd import data_app
from .demo import demo
from .eval_cmd import eval_command
from .export_cmd import export
from .info_cmd import info
from .jetson_cmd import check, compile_cmd
from .pretrain_cmd import pretrain
from .train_cmd import train


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
    app.command()(train)
    app.command()(pretrain)
    app.command("eval")(eval_command)
    app.command()(export)
    app.command()(info)
    app.command()(build)
    app.command()(bench)
    app.command()(demo)
    app.command()(check)
    app.command("compile")(compile_cmd)
