"""``reallod demo model | agent``: the Gradio pages of Real-Model and of the agent (:mod:`reallod.demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from reallod.cli.common import (
    AgentConfig,
    BaseUrl,
    Dtype,
    LlmBaseUrl,
    ModelArg,
    VlmBaseUrl,
    quiet_transformers,
    with_options,
)
from reallod.errors import ReallodError

app = typer.Typer(
    no_args_is_help=True,
    help="Web demos (Gradio) of Real-Model and of the agent; served on 127.0.0.1 unless --server_name says otherwise.")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="demo")


_ServerName = Annotated[str, typer.Option(
    "--server_name", "--server-name", help="Address to bind; 0.0.0.0 makes the page reachable from other machines.")]
_ServerPort = Annotated[int, typer.Option("--server_port", "--server-port", min=1, max=65535, help="Port to serve on.")]
_Share = Annotated[bool, typer.Option("--share", help="Ask Gradio for a public share link (off unless given).")]
_Debug = Annotated[bool, typer.Option("--debug", help="Show unexpected errors' messages in the page; log tracebacks.")]
_MaxUpload = Annotated[float, typer.Option("--max-upload-mb", min=0.01, help="Largest upload, in MB.")]
_MaxPixels = Annotated[int, typer.Option("--max-pixels", min=1, help="Largest image, in pixels (width × height).")]
_Timeout = Annotated[float, typer.Option("--timeout", min=1.0, help="Seconds one request may take, waiting included.")]
_Concurrency = Annotated[int, typer.Option("--concurrency", min=1, help="Requests running at once.")]
_PerClient = Annotated[int, typer.Option(
    "--per-client", min=1, help="Requests one client address may have waiting or running.")]


def _demo_setup(server_name: _ServerName = "127.0.0.1", server_port: _ServerPort = 7860, share: _Share = False,
                debug: _Debug = False, max_upload_mb: _MaxUpload = 10.0, max_pixels: _MaxPixels = 25_000_000,
                timeout: _Timeout = 120.0, concurrency: _Concurrency = 1,
                per_client: _PerClient = 1):  # type: ignore[no-untyped-def]
    """The server options of both demos (:func:`with_options`) as server options and limits; a clear error
    when gradio (the demo extra) is missing."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise ReallodError("the demos need gradio: pip install 'reallod[demo]'")
    from reallod.demo.limits import DemoLimits
    from reallod.demo.server import ServerOptions

    limits = DemoLimits(max_upload_mb=max_upload_mb, max_pixels=max_pixels, timeout_s=timeout,
                        concurrency=concurrency, per_client=per_client)
    return ServerOptions(server_name, server_port, share, debug), limits


@app.command("model")
@with_options(_demo_setup, own_first=True)
def demo_model_cmd(
    model: ModelArg,
    weights: Annotated[Path | None, typer.Option(
        "--weights", help="Replace MODEL's weights with this file (as for `reallod detect`).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda or cuda:N \\[default: cuda if available].",
                                               show_default=False)] = None,
    dtype: Dtype = "fp32",
    score_thre: Annotated[float, typer.Option(
        "--score_thre", "--score-thre", min=0.0, max=1.0, help="Initial score threshold of the page.")] = 0.3,
    score_over: Annotated[str, typer.Option(
        "--score-over", help="expression-tokens: a box scores the mean over the expression's own tokens (the "
        "benchmark protocol); all-tokens: the max over every token of the prompt, special tokens and \".\" "
        "included, as the published Real-Model demos score (the page then runs parallel mode only).")
    ] = "expression-tokens",
    **server: Any,
) -> None:
    """Serve the Real-Model page: upload an image, type expressions, see boxes, a table and a JSON download.

    Example: reallod demo model models/real-model-t --server_port 7860
    """
    from reallod.model.hf_folder import check_local_folder

    check_local_folder(model)  # a mistyped local path fails here, before gradio and torch load
    from reallod.model.inference import SCORE_OVER

    if score_over not in SCORE_OVER:
        raise typer.BadParameter(f"use one of {', '.join(SCORE_OVER)}", param_hint="--score-over")
    options, limits = _demo_setup(**server)
    from reallod.demo.model_app import serve_model_demo
    from reallod.model.loading import load_detector

    quiet_transformers()
    detector = load_detector(model, weights=weights, device=device, dtype=dtype)
    typer.echo(f"Real-Model demo: {model} on {detector.device}; http://{options.server_name}:{options.server_port} "
               "(Ctrl-C stops it)", err=True)
    serve_model_demo(detector, options, limits=limits, score_thr=score_thre,
                     score_over=score_over)  # type: ignore[arg-type]


@app.command("agent")
@with_options(_demo_setup, own_first=True)
def demo_agent_cmd(
    config: AgentConfig,
    base_url: BaseUrl = None,
    llm_base_url: LlmBaseUrl = None,
    vlm_base_url: VlmBaseUrl = None,
    max_cycles: Annotated[int | None, typer.Option(
        "--max-cycles", min=1, max=20, help="Initial cycles per task (default: the config's).")] = None,
    timeout: _Timeout = 300.0,
    **server: Any,
) -> None:
    """Serve the agent page: give an object, a caption and an expression; watch the workflow re-align it.

    Example: reallod demo agent --config offline
    """
    options, limits = _demo_setup(timeout=timeout, **server)
    from reallod.demo.agent_app import roles_from_config, serve_agent_demo

    quiet_transformers()
    cfg, roles = roles_from_config(config, base_url=base_url, llm_base_url=llm_base_url, vlm_base_url=vlm_base_url)
    typer.echo(f"Real-Agent demo: config {cfg.name}; http://{options.server_name}:{options.server_port} "
               "(Ctrl-C stops it)", err=True)
    serve_agent_demo(roles, options, config_name=cfg.name, max_cycles=max_cycles or cfg.max_cycles, limits=limits)

