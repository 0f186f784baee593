"""How a command's result or error reaches the user, the same for `routed` and `routedctl`.

A command returns an exit code (the daemons) or a routed.render.Output (everything that
shows something), which the one renderer formats. Errors print one line naming the
problem and exit 1; --debug adds the traceback. A bug is still one line.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

from routed.errors import RoutedError
from routed.render import Output, render


def run(prog: str, command: Callable[[], int | Output | None], *, fmt: str | None = None, debug: bool = False,
        stdout=None, stderr=None) -> int:
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    try:
        result = command()
        if not isinstance(result, Output):
            return result or 0
        text, notes = render(result, fmt or result.default_format)
        if text:
            print(text, file=stdout)
        if notes:
            print(notes, file=stderr)
        return result.exit_code
    except RoutedError as err:
        if debug:
            traceback.print_exc(file=stderr)
        print(f"{prog}: {err}", file=stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `routedctl get ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:  # a bug: still one line, the traceback on request
        if debug:
            traceback.print_exc(file=stderr)
        print(f"{prog}: internal error: {type(err).__name__}: {err} (rerun with --debug)", file=stderr)
        return 1
