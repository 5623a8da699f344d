"""The `tp` command. Thin: each verb parses its arguments and calls a typed function.

Importing this module must stay cheap (no torch): `tp --help` answers in well under a second.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback

from typing import Any

import typer

from tpcli.cli import convert, finetune, generate, info, plugins, recipes, runs, train, zoo

app = typer.Typer(
    name="tp",
    help="tp: pre-train, fine-tune and convert models built from five components "
    "(embedding, encoder, target embedding, decoder, target).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="show tracebacks for errors"),
) -> None:
    if debug:
        os.environ["TP_DEBUG"] = "1"


train.register(app)
finetune.register(app)
convert.register(app)
info.register(app)
plugins.register(app)
recipes.register(app)
runs.register(app)
generate.register(app)
zoo.register(app)


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("TP_DEBUG") == "1"


def _click_classes(name: str) -> tuple[type[BaseException], ...]:
    """Click's exception `name` from every click that may be in play: typer >= 0.20 vendors its
    own copy (typer._click), whose classes are not the installed click's."""
    import importlib

    found: list[type[BaseException]] = []
    for mod_name in ("typer._click.exceptions", "typer.exceptions", "click.exceptions"):
        try:
            cls = getattr(importlib.import_module(mod_name), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in found:
            found.append(cls)
    return tuple(found)


def _on_sigterm(signum: int, frame: object) -> None:
    from tpcli.errors import Terminated

    raise Terminated()


def _exit_now(signum: int, frame: object) -> None:
    """SIGTERM once the verb has ended (its cleanup done, its error being reported): end the
    process with 130 and no traceback, wherever it is (torchrun stops the surviving ranks so)."""
    raise SystemExit(130)


def _catch_sigterm(handler: object) -> object:
    """Install `handler` for SIGTERM, returning the previous one (only the main thread may)."""
    try:
        return signal.signal(signal.SIGTERM, handler)  # type: ignore[arg-type]
    except ValueError:  # main() called from another thread (a test, an embedding program)
        return None


def _interrupted(argv: list[str]) -> str:
    """What an interrupted verb that gave no specifics says (a verb that knows more raises
    `Interrupted` with what was kept and what to run next)."""
    verb = next((a for a in argv if not a.startswith("-")), "tp")
    return (f"interrupted: tp {verb} was stopped before it finished; nothing it was writing was "
            "committed\n  hint: run the same command again")


def add_plugin_commands(group: Any) -> None:
    """The verbs plugins register (`tp_register_commands`) added to tp's click group. One of
    tp's own names is refused with a warning (tp's verb stays); a name two plugins register
    becomes a verb that raises the clash, naming both; a plugin's verb that fails to load is
    reported and left out. Nothing here stops tp from running."""
    from tpcli.errors import TpError
    from tpcli.plugins import get_plugins

    registry = get_plugins().registry
    clashed = {name for kind, name in registry.clashed() if kind == "command"}
    for name in registry.names("command"):
        if name in group.commands:
            who = registry.clashed().get(("command", name)) or [registry.entry("command", name)]
            plugins = ", ".join(f"'{e.plugin}' ({e.distribution})" for e in who)
            print(f"warning: plugin {plugins} registers the verb {name!r}, which is tp's own; "
                  "it is left out (rename it in that plugin)", file=sys.stderr)
            continue
        try:
            if name in clashed:
                group.add_command(_clash_command(name), name)
                continue
            group.add_command(_as_click(name, registry.get("command", name)), name)
        except TpError as e:
            print(f"warning: {e}", file=sys.stderr)
        except Exception as e:  # a plugin's broken CLI module must not brick tp
            entry = registry.entry("command", name)
            print(f"warning: plugin '{entry.plugin}' ({entry.distribution}): its verb {name!r} "
                  f"failed to load ({type(e).__name__}: {e}); it is left out", file=sys.stderr)


def _as_click(name: str, target: Any) -> Any:
    """A registered verb as a click command: a Typer app as it is (a group of verbs), a
    function as a one-verb app's command."""
    from tpcli.errors import TpError

    if isinstance(target, typer.Typer):
        return typer.main.get_command(target)
    if callable(target):
        one = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        one.command(name=name)(target)
        return typer.main.get_command(one)
    raise TpError(f"the verb {name!r} is registered as {type(target).__name__}, not a function "
                  "or a typer.Typer", hint="register a function written for Typer, or a Typer app")


def _clash_command(name: str) -> Any:
    """A verb two plugins registered: running it raises the registry's clash error."""
    import click

    def run(args: tuple[str, ...]) -> None:
        from tpcli.plugins import get_plugins

        get_plugins().registry.entry("command", name)  # raises, naming both plugins

    return click.Command(name, callback=run, help="(registered by two plugins: run it to see "
                         "which)", params=[click.Argument(["args"], nargs=-1)],
                         context_settings={"ignore_unknown_options": True})


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tp` console script; returns the exit code.

    Ctrl-C and SIGTERM end any verb with exit code 130 and one paragraph saying what was kept
    and what to run next; SIGTERM is raised as a KeyboardInterrupt (`Terminated`) so the same
    cleanup runs for both."""
    from tpcli.errors import Interrupted, TpError

    argv = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    add_plugin_commands(command)
    # resolved before the verb runs: an except clause that imports could itself be interrupted
    click_exit, click_error, click_abort = (_click_classes(n)
                                            for n in ("Exit", "ClickException", "Abort"))
    previous = _catch_sigterm(_on_sigterm)
    try:
        try:
            rv = command.main(args=argv, prog_name="tp", standalone_mode=False)
        finally:
            _catch_sigterm(_exit_now)
        # typer turns a KeyboardInterrupt it sees into a returned 130; commands return None
        if isinstance(rv, int) and rv != 0:
            if rv == 130:
                print(_interrupted(argv), file=sys.stderr)
            return rv
        return 0
    except click_exit as e:
        return int(getattr(e, "exit_code", 0) or 0)
    except click_error as e:
        e.show()  # type: ignore[attr-defined]
        return int(getattr(e, "exit_code", 1))
    except click_abort:
        print(_interrupted(argv), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(_interrupted(argv), file=sys.stderr)
        return 130
    except Interrupted as e:
        if _debug_requested(argv):
            traceback.print_exc()
        print(f"interrupted: {e}", file=sys.stderr)
        return Interrupted.exit_code
    except TpError as e:
        if _debug_requested(argv):
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug in tp or a plugin: say so, traceback with --debug
        if _debug_requested(argv):
            traceback.print_exc()
        print(f"error: internal error: {type(e).__name__}: {e}\n  hint: rerun with --debug for "
              "the traceback and report it", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            _catch_sigterm(previous)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
