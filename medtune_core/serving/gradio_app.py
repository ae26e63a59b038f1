"""Gradio demo (port 7860): chat with a trained model, the reasoning block shown in its
own panel, and the medical disclaimer always on screen.

Gradio is imported only when a demo is built (``pip install 'medtune[serve]'``). The event ``respond`` is also the
demo's API (``gradio_client``: ``client.predict(message, history, temperature, max_new_tokens, api_name="/respond")``
returns ``(history, reasoning, "")``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from medtune_core.errors import MedtuneError
from medtune_core.inference.generate import Generator, SamplingParams
from medtune_core.inference.think import ThinkStreamParser

DISCLAIMER = (
    "⚠️ **医疗免责声明 / Medical disclaimer**：本演示仅供研究使用，模型输出可能有误，不能替代医生的诊断和治疗。"
    "如有胸痛、呼吸困难、意识障碍等紧急情况，请立即拨打 120 或前往急诊。 "
    "Research use only: answers may be wrong and are not medical advice. In an emergency call your local "
    "emergency number or go to the nearest emergency department."
)
REASONING_EMPTY = "_(no reasoning block in this answer)_"


def _import_gradio() -> Any:
    try:
        import gradio as gr
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MedtuneError("the Gradio demo needs gradio: pip install 'medtune[serve]' (gradio>=5,<7)") from exc
    return gr


def _history_messages(history: list[Any] | None) -> list[dict[str, str]]:
    """Gradio chat history (message dicts, possibly with content parts) → plain chat messages."""
    msgs: list[dict[str, str]] = []
    for item in history or []:
        if not isinstance(item, dict) or item.get("role") not in ("user", "assistant"):
            continue
        content = item.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if (item.get("metadata") or {}).get("title"):
            continue  # a reasoning bubble; not part of the conversation
        msgs.append({"role": item["role"], "content": str(content or "")})
    return msgs


def respond_stream(
    generator: Generator,
    message: str,
    history: list[Any] | None,
    params: SamplingParams,
    system: str | None = None,
) -> Iterator[tuple[list[dict[str, str]], str]]:
    """Yield ``(history, reasoning_markdown)`` as the answer streams in; the answer bubble holds no reasoning."""
    convo = _history_messages(history)
    msgs = ([{"role": "system", "content": system}] if system else []) + convo + [{"role": "user", "content": message}]
    parser = ThinkStreamParser()
    shown = [*convo, {"role": "user", "content": message}, {"role": "assistant", "content": ""}]
    for chunk in generator.stream(msgs, params):
        for _ in parser.feed(chunk):
            pass
        shown[-1] = {"role": "assistant", "content": parser.answer.strip()}
        yield shown, (parser.reasoning.strip() or REASONING_EMPTY)
    for _ in parser.flush():
        pass
    shown[-1] = {"role": "assistant", "content": parser.answer.strip()}
    yield shown, (parser.reasoning.strip() or REASONING_EMPTY)


def build_demo(
    generator: Generator,
    *,
    title: str | None = None,
    system: str | None = None,
    params: SamplingParams | None = None,
    disclaimer: str = DISCLAIMER,
) -> Any:
    """The ``gr.Blocks`` app; ``launch_demo`` starts it."""
    gr = _import_gradio()
    base = params or SamplingParams(max_new_tokens=512, temperature=0.7)
    title = title or f"medtune · {generator.name}"

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}")
        gr.Markdown(disclaimer, elem_id="medtune-disclaimer")
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="对话 / Chat", height=420)
                box = gr.Textbox(label="问题 / Question", placeholder="描述症状或提出问题…", lines=2)
                with gr.Row():
                    send = gr.Button("发送 / Send", variant="primary")
                    clear = gr.Button("清空 / Clear")
            with gr.Column(scale=2):
                with gr.Accordion("推理过程 / Reasoning (<think>)", open=True):
                    reasoning = gr.Markdown(REASONING_EMPTY)
                temperature = gr.Slider(0.0, 1.5, value=base.temperature, step=0.05, label="temperature")
                max_tokens = gr.Slider(1, 4096, value=base.max_new_tokens, step=1, label="max new tokens")

        def respond(message: str, history: list[Any], temp: float, max_new: float) -> Iterator[tuple[Any, str, str]]:
            if not (message or "").strip():
                yield history, REASONING_EMPTY, ""
                return
            p = base.model_copy(update={"temperature": float(temp), "max_new_tokens": int(max_new)})
            for shown, reason in respond_stream(generator, message, history, p, system):
                yield shown, reason, ""

        inputs = [box, chatbot, temperature, max_tokens]
        outputs = [chatbot, reasoning, box]
        send.click(respond, inputs, outputs, api_name="respond")
        box.submit(respond, inputs, outputs, api_name=False)
        clear.click(lambda: ([], REASONING_EMPTY, ""), None, outputs, api_name="clear")
    return demo


def launch_demo(
    demo: Any, host: str = "127.0.0.1", port: int = 7860, *, block: bool = True, auth: tuple[str, str] | None = None
) -> Any:
    """Launch on ``host:port`` (loopback by default, no share link); ``block=False`` returns at once."""
    demo.queue(default_concurrency_limit=1)
    return demo.launch(
        server_name=host, server_port=port, share=False, prevent_thread_lock=not block, auth=auth, quiet=not block
    )
