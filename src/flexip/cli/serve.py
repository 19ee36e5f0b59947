"""`flexip serve`: the web page, to play with the preservation dial in a browser."""

from __future__ import annotations

import argparse
import importlib.util
import signal
import threading

from ..errors import FlexIPError
from ..models.config_file import read_config
from .options import add_loading_options, model_settings

EXAMPLES = """\
examples:
  flexip serve                                  # the embedded demo model, on http://127.0.0.1:7860
  flexip serve --adapter runs/a/adapter --port 8080 --device cuda --dtype float16
  flexip serve --host 0.0.0.0                   # reachable from other machines: anyone who can reach it may use it

The page: upload a subject (or take the built-in example), type a prompt, set the dial, generate one image or
a sweep along the dial. Each result downloads as a PNG with its settings, and the page shows the
`flexip generate` line that makes the same image. Needs the app extra: pip install "flexip[app]"."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a web page to generate with the preservation dial in a browser",
        description="Load the model once and serve a web page for it (gradio). Listens on 127.0.0.1 only "
        "unless --host says otherwise; stop it with Ctrl-C.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; 0.0.0.0 opens it to the network (default: 127.0.0.1)")  # fmt: skip
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    add_loading_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:

    if importlib.util.find_spec("gradio") is None:
        raise FlexIPError('the web page needs gradio, which is not installed: pip install "flexip[app]"')
    if not 0 < args.port < 65536:
        raise FlexIPError(f"--port {args.port} is not a port number; give one from 1 to 65535, e.g. 7860")
    models = model_settings(args)
    if args.adapter is not None:
        read_config(args.adapter)  # a missing or broken adapter, said before torch loads

    from ..app.page import running  # torch and gradio: once the command is known good
    from ..app.service import Service
    from ..pipeline.front_end import load_pipeline

    loaded = load_pipeline(models)
    loaded.pipe.set_progress_bar_config(disable=True)  # the page has its own progress bar
    # A service manager's stop (SIGTERM) or a closed terminal (SIGHUP, absent on Windows) ends the server as
    # Ctrl-C does: leaving the context removes the folder of uploads and results, which dying of the signal
    # would leave behind.
    stopped = threading.Event()
    numbers = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous = {number: signal.signal(number, lambda *_: stopped.set()) for number in numbers}
    try:
        with running(lambda results: Service(loaded, models, results), args.host, args.port) as url:
            print(f"flexip serve: open {url} (Ctrl-C stops it)", flush=True)
            stopped.wait()  # or Ctrl-C: main() reports the interrupt
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 0
