"""The `gan-prune` command line: a click group whose commands live one per module in this package.

Commands are imported only when they run (or when --help lists them), so `gan-prune --help` stays fast
and a heavy dependency of one command never slows down another.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import click

from gan_prune.errors import GanPruneError, untrusted_text

# command name -> module defining `command` (a click.Command). Order is the pipeline order.
COMMANDS = {
    'info': 'gan_prune.cli.info',
    'env': 'gan_prune.cli.env',
    'prune': 'gan_prune.cli.prune',
    'generate': 'gan_prune.cli.generate',
    'export': 'gan_prune.cli.export',
    'teacher-stats': 'gan_prune.cli.teacher_stats',
    'distill': 'gan_prune.cli.distill',
    'metrics': 'gan_prune.cli.metrics',
    'demo': 'gan_prune.cli.demo',
}


# Commands that must run whatever $STYLEGAN2_ADA_ROOT says (they report a wrong value instead of failing on it).
COMMANDS_WITHOUT_LAYER = ('env',)
_HELP_OPTIONS = ('-h', '--help')


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is needed."""

    def invoke(self, ctx: click.Context):
        # Keep the subcommand's arguments where the group callback can see them (click hands them on after
        # the callback), so that `gan-prune CMD --help` is not refused for a wrong --sg2ada-root.
        ctx.meta['gan_prune.subcommand_args'] = list(ctx.args)
        return super().invoke(ctx)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, mod in COMMANDS.items() if importlib.util.find_spec(mod) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        mod = COMMANDS.get(name)
        if mod is None or importlib.util.find_spec(mod) is None:
            return None
        return importlib.import_module(mod).command


@click.group(cls=LazyGroup, context_settings={'help_option_names': ['-h', '--help'], 'max_content_width': 110})
@click.option('--debug', is_flag=True, help='Show full tracebacks instead of one-line errors.')
@click.option('--sg2ada-root', metavar='PATH', envvar='STYLEGAN2_ADA_ROOT',
              help='Use this stylegan2-ada-pytorch checkout (its ops, including CUDA kernels) instead of the '
                   'bundled clean-room layer. Also read from $STYLEGAN2_ADA_ROOT.')
@click.version_option(package_name='gan_prune')
@click.pass_context
def cli(ctx: click.Context, debug: bool, sg2ada_root: str | None) -> None:
    """Compress StyleGAN2-ADA generators: content-aware pruning, then NICKEL & DiME distillation.

    \b
    Typical use:
      gan-prune info    --pkl ffhq.pkl
      gan-prune prune   --pkl ffhq.pkl --rate 0.9573 --out pruned.pkl
      gan-prune distill --teacher ffhq.pkl --student pruned.pkl --data ffhq.zip --outdir runs/
      gan-prune demo    (everything above, on the bundled teacher, on a laptop CPU)
    """
    _use_layer(ctx, sg2ada_root)


def _use_layer(ctx: click.Context, sg2ada_root: str | None) -> None:
    """Switch to the user's stylegan2-ada-pytorch checkout; a wrong one fails here, with one line, unless the
    command does not need the layer (`env` reports it, `CMD --help` only prints help)."""
    from gan_prune import compat
    from_env = ctx.get_parameter_source('sg2ada_root') == click.core.ParameterSource.ENVIRONMENT
    # Also with no root: that clears a problem left by an earlier invocation in this process.
    compat.try_sg2ada_root(sg2ada_root, f'${compat.ENV_VAR}' if from_env else '--sg2ada-root')
    help_only = any(a in _HELP_OPTIONS for a in ctx.meta.get('gan_prune.subcommand_args', []))
    if ctx.invoked_subcommand not in COMMANDS_WITHOUT_LAYER and not help_only:
        compat.check_root()


def _first_line(error: BaseException) -> tuple[str, bool]:
    """The first non-empty line of the error's message ('' if none), and whether more lines followed."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # Messages may quote names read from a file: no terminal control sequences reach the terminal.
    return (untrusted_text(lines[0], limit=None) if lines else ''), len(lines) > 1


def one_line(error: BaseException) -> str:
    """The error as one non-empty line: a GanPruneError's message, anything else with its type; the type
    stands in for an empty message, and a message of several lines keeps its first."""
    first, more = _first_line(error)
    if isinstance(error, GanPruneError) and first:
        return first + (' (more with --debug)' if more else '')
    return f'{type(error).__name__}: {first or "no message"} (run with --debug for the traceback)'


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input becomes one line on stderr and a non-zero exit; --debug shows tracebacks."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = '--debug' in args or os.environ.get('GAN_PRUNE_DEBUG') == '1'
    try:
        cli.main(args=args, prog_name='gan-prune', standalone_mode=False)
    except click.exceptions.Abort:
        click.echo('Aborted.', err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except GanPruneError as e:
        if debug:
            raise
        click.echo(f'error: {one_line(e)}', err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo('Interrupted.', err=True)
        sys.exit(130)
    except Exception as e:  # pylint: disable=broad-except
        if debug:
            raise
        click.echo(f'error: {one_line(e)}', err=True)
        sys.exit(1)


if __name__ == '__main__':
    main()
