"""The M-Solomon demo: try a query, see the decision, the augmentation, the candidates and the latency.

    python app.py [--model PATH] [--host 127.0.0.1] [--port 7860] [--threads N] [--reports DIR] [--index DIR ...]

The page lays out six tabs (Search, Compare, Step by step, Corpora, Error explorer, Model); the logic lives in
`msolomon.demo`. The search is also the API endpoint `/search` for `gradio_client`. Bound to 127.0.0.1 unless told
otherwise; offline: no model hub, no analytics, no font or script from outside the machine.
"""
from __future__ import annotations

from msolomon.settings import parse_settings, process_environment

process_environment(set_threads=False)  # before gradio and transformers are imported: they read these at import

import json  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Sequence  # noqa: E402

import gradio as gr  # noqa: E402

from msolomon.demo.corpus import ALL_MINIMMEB  # noqa: E402
from msolomon.demo.examples import INSTRUCTION_PRESETS  # noqa: E402
from msolomon.demo.explorer import QUALITY, QUALITY_HEADERS  # noqa: E402
from msolomon.demo.handlers import Handlers  # noqa: E402
from msolomon.demo.panel import CARD_HEADERS, TEACHING  # noqa: E402
from msolomon.demo.service import MODES, SearchService  # noqa: E402
from msolomon.demo.settings import DemoSettings  # noqa: E402

logger = logging.getLogger("app")

# system fonts only: the default theme would fetch its fonts from Google
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "Consolas", "monospace"])
CSS = "#decision {margin: 4px 0} .latency {max-width: 640px} footer {display: none !important}"
VISITOR_STORAGE_KEY = "msolomon-visitor"  # where the browser keeps its visitor key (encrypted by gradio)


def judged_by_the_demo(image: gr.Image) -> gr.Image:
    """Let the demo, not gradio, judge an uploaded image: gradio's own preprocessing opens the file with PIL and fails
    with its internal message ("Could not preprocess input ... UnidentifiedImageError") on an empty, broken or huge
    file; wrapped, the file goes on to `SearchService.check`, whose message names the problem. (The instance's
    method is wrapped, not the class subclassed: gradio writes a .pyi stub beside any module that subclasses a
    component.)"""
    original = image.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return original(payload)
        except Exception:  # noqa: BLE001 - any decoding failure: the handler decodes again and explains
            return str(payload.path) if payload is not None and getattr(payload, "path", None) else None

    image.preprocess = preprocess  # type: ignore[method-assign]
    return image


def build_demo(model: Any, settings: DemoSettings | None = None, service: SearchService | None = None) -> gr.Blocks:
    """The page for a loaded `MSolomon`; builds (or finds in the cache) the default corpus index first."""
    settings = settings or DemoSettings()
    service = service or SearchService(model, settings).start()
    h = Handlers(service)
    limits = settings.limits
    with gr.Blocks(title="M-Solomon: adaptive query augmentation") as demo:
        visitor = gr.BrowserState(None, storage_key=VISITOR_STORAGE_KEY)
        gr.Markdown("# M-Solomon · adaptive query augmentation\nThe model decides per query whether to write an "
                    "augmentation (`/augment`) or embed at once (`/embed`), then retrieves from a corpus.")
        with gr.Tabs():
            with gr.Tab("Search", id="search"):
                with gr.Row():
                    with gr.Column(scale=2):
                        image = judged_by_the_demo(gr.Image(
                            type="filepath", sources=["upload", "clipboard", "webcam"], height=200,
                            label="Image (optional: upload, paste or webcam)", elem_id="query-image"))
                        text = gr.Textbox(label=f"Query text (at most {limits.max_query_chars} characters)", lines=2,
                                          elem_id="query-text")
                        instruction = gr.Dropdown([""] + INSTRUCTION_PRESETS, value="", allow_custom_value=True,
                                                  label="Instruction (MMEB-style preset, or type your own)")
                        mode = gr.Radio(list(MODES), value="auto", label="Mode: auto = the model decides, never = "
                                        "NoAug path, always = AlwaysAug path", elem_id="mode")
                        with gr.Row():
                            threshold = gr.Slider(0, 1, value=model.settings.default_threshold, step=0.05,
                                                  label="Threshold (auto: augment when p ≥ it)")
                            top_k = gr.Slider(1, limits.max_top_k, value=10, step=1, label="Top-k")
                        corpus = gr.Dropdown(h.corpus_names(), value=ALL_MINIMMEB, label="Corpus", elem_id="corpus")
                        example_id = gr.Textbox(visible=False)
                        go = gr.Button("Search", variant="primary", elem_id="search-button")
                    with gr.Column(scale=3):
                        gauge = gr.Label(num_top_classes=2, elem_id="gauge",
                                         label="The model's own preference, p(/augment) vs p(/embed), before "
                                               "the mode applies")
                        decision = gr.HTML(elem_id="decision-box")
                        what_if = gr.HTML(elem_id="what-if-box")
                        augmentation = gr.Textbox(label="Augmentation (streamed as it is written)", lines=2,
                                                  interactive=False, elem_id="augmentation")
                        gallery = gr.Gallery(label="Retrieved images", columns=5, height=230, elem_id="gallery")
                        hits = gr.HTML(elem_id="hits-box")
                        latency = gr.HTML(elem_id="latency-box")
                examples = service.examples
                gr.Examples([[e.image, e.text or "", e.instruction or "", "auto", e.corpus, e.id] for e in examples],
                            [image, text, instruction, mode, corpus, example_id],
                            example_labels=[e.label for e in examples],
                            label=f"{len(examples)} held-out MiniMMEB test queries with known answers: click one, "
                                  "then Search (the answer is marked when found)", examples_per_page=20)
                inputs = [text, image, instruction, mode, threshold, top_k, corpus, example_id, visitor]
                outputs = [gauge, decision, augmentation, gallery, hits, latency, what_if]
                for trigger, name in ((go.click, "ui_search"), (text.submit, "ui_search_enter")):
                    trigger(h.cleared, None, outputs, queue=False, api_visibility="private").then(
                        h.search, inputs, outputs, api_name=name, api_visibility="private",
                        concurrency_limit=settings.queue_size)  # waiting costs a thread, not the model: the
                # StreamScheduler starts newcomers between two steps of the generations under way

            with gr.Tab("Compare", id="compare"):
                gr.Markdown("The query of the Search tab through M-Solomon's three paths, and through the trained "
                            "NoAug and AlwaysAug models when `assets/baselines/` has them: their top-k lists, "
                            "latencies, and where the rankings differ.")
                compare_go = gr.Button("Compare the Search tab's query", variant="primary", elem_id="compare-button")
                compare_out = gr.HTML(elem_id="compare-box")

                def compare(t, i, ins, th, k, c, ex, v, progress=gr.Progress()):
                    return h.compare(t, i, ins, th, k, c, ex, v, progress)

                compare_go.click(lambda: "", None, compare_out, queue=False, api_visibility="private").then(
                    compare, [text, image, instruction, threshold, top_k, corpus, example_id, visitor], compare_out,
                    api_visibility="private")

            with gr.Tab("Step by step", id="steps"):
                gr.Markdown("The Search tab's query, step by step, for teaching: the prompt as the model reads it, "
                            "the decision against the threshold, each token it writes after `/augment` with its "
                            "probability, and how the ranking of the corpus moves from `/embed` to the full "
                            "augmentation, token by token.")
                steps_go = gr.Button("Explain the Search tab's query", variant="primary", elem_id="steps-button")
                steps_out = gr.HTML(elem_id="steps-box")
                steps_go.click(lambda: "", None, steps_out, queue=False, api_visibility="private").then(
                    h.step_by_step, [text, image, instruction, mode, threshold, top_k, corpus, example_id, visitor],
                    steps_out, api_visibility="private")

            with gr.Tab("Corpora", id="corpora"):
                corpora = gr.Dataframe(h.corpora_rows(), headers=["corpus", "items", "images", "what"],
                                       interactive=False, wrap=True, elem_id="corpora-table")
                gr.Markdown(f"**Your own corpus**: images (at most {limits.max_image_mb:g} MB each) and/or a UTF-8 "
                            f"text file with one candidate per line; at most {limits.max_corpus_items} items, "
                            f"{limits.max_custom_corpora} corpora per browser. Your corpora are yours: only this "
                            f"browser sees them (it keeps a key), they survive a restart, and they are removed "
                            f"{settings.keep_corpora:g} days after their last use.")
                with gr.Row():
                    up_images = gr.File(file_count="multiple", file_types=["image"], label="Images", type="filepath",
                                        elem_id="corpus-images")
                    up_text = gr.File(file_count="single", file_types=[".txt"], label="Text file", type="filepath",
                                      elem_id="corpus-text")
                up_name = gr.Textbox(label="Corpus name", value="my corpus", elem_id="corpus-name")
                up_go = gr.Button("Index", variant="primary", elem_id="index-button")
                up_status = gr.Markdown(elem_id="corpus-status")
                with gr.Row():
                    del_name = gr.Dropdown([], label="One of your corpora", allow_custom_value=False, scale=3)
                    del_go = gr.Button("Delete it", scale=1)

                def own(names):
                    return [n for n in names if n not in service.corpora]

                def index_corpus(n, imgs, txt, v, progress=gr.Progress()):
                    status, names, new, rows = h.index_corpus(n, imgs, txt, v, progress)
                    return (status, gr.update(choices=names, value=new) if new else gr.update(choices=names), rows,
                            gr.update(choices=own(names)))

                up_go.click(index_corpus, [up_name, up_images, up_text, visitor],
                            [up_status, corpus, corpora, del_name], api_visibility="private")

                def delete_corpus(n, v):
                    status, names, rows = h.delete_corpus(n, v)
                    return status, gr.update(choices=names, value=ALL_MINIMMEB), rows, gr.update(choices=own(names),
                                                                                                  value=None)

                del_go.click(delete_corpus, [del_name, visitor], [up_status, corpus, corpora, del_name],
                             api_visibility="private")

            with gr.Tab("Error explorer", id="explorer"):
                gr.Markdown("Predictions of `python -m msolomon.evaluation` (`*.predictions.jsonl`) from the folder "
                            "given with `--reports`, or a small evaluation run here.")
                with gr.Row():
                    files = gr.Dropdown(h.explorer_choices(), label="Predictions file", scale=3)
                    open_go = gr.Button("Open", scale=1)
                with gr.Accordion("Run the evaluation on a small MiniMMEB subset", open=False):
                    ev_sets = gr.CheckboxGroup(list(service.bench.names), value=list(service.bench.names)[:3],
                                               label="Datasets")
                    ev_limit = gr.Slider(1, limits.max_eval_queries, value=10, step=1, label="Queries per dataset")
                    ev_modes = gr.CheckboxGroup(list(MODES), value=["auto", "never", "always"], label="Modes")
                    ev_go = gr.Button("Run evaluation")
                table = gr.Dataframe(headers=["dataset", "mode", "queries", "P@1 %", "augment rate",
                                              "latency ms (mean)"], interactive=False, label="Per dataset",
                                     elem_id="explorer-table")
                plot = gr.Image(label="Accuracy vs latency", type="filepath", height=330)
                quality = gr.Dataframe(headers=QUALITY_HEADERS, interactive=False, elem_id="decision-quality",
                                       label="Decision quality (needs auto, never and always): per dataset, the "
                                             "queries augmenting helped / hurt / left the same, the embedded ones it "
                                             "would have helped (missed) or hurt (saved), the per-query oracle and "
                                             "the decision accuracy where the two paths disagree. Click a count "
                                             "to list those queries.")
                with gr.Row():
                    f_set = gr.Dropdown(["all"], value="all", label="Dataset")
                    f_mode = gr.Dropdown(["all", *MODES], value="all", label="Mode")
                    f_dec = gr.Dropdown(["all", "/augment", "/embed"], value="all", label="Decision")
                    f_out = gr.Dropdown(["all", "right", "wrong"], value="all", label="Outcome")
                    f_quality = gr.Dropdown(["all", *QUALITY], value="all", label="Decision quality")
                queries = gr.Dataframe(headers=["#", "dataset", "mode", "decision", "right", "p(/augment)", "query"],
                                       interactive=False, label="Queries (click a row)",
                                       elem_id="explorer-queries")
                with gr.Row():
                    q_image = gr.Image(label="Query image", height=200, scale=1)
                    q_detail = gr.HTML()
                filters = [files, f_set, f_mode, f_dec, f_out, f_quality]
                opened = [table, plot, f_set, queries, quality, f_mode, f_dec, f_out, f_quality]

                def open_file(label):
                    rows, png, sets, qrows, qual = h.explorer_open(label)
                    return (rows, png, gr.update(choices=["all", *sets], value="all"), qrows, qual,
                            *(["all"] * 4))

                open_go.click(open_file, files, opened, api_visibility="private")
                for f in filters[1:]:
                    f.change(h.explorer_filter, filters, queries, api_visibility="private")

                def show(label, ds, md, dc, oc, ql, evt: gr.SelectData):
                    return h.explorer_detail(label, ds, md, dc, oc, evt.index[0], ql)

                queries.select(show, filters, [q_detail, q_image], api_visibility="private")

                def list_cell(label, evt: gr.SelectData):
                    dataset, category = h.explorer_quality_cell(label, *evt.index)
                    rows = h.explorer_filter(label, dataset, "auto", "all", "all", category)
                    return dataset, "auto", "all", "all", category, rows

                quality.select(list_cell, files, [f_set, f_mode, f_dec, f_out, f_quality, queries],
                               api_visibility="private")

                def run_eval(sets, limit, ms, progress=gr.Progress(track_tqdm=True)):
                    names, label = h.explorer_run(sets, limit, ms, progress)
                    return (gr.update(choices=names, value=label), *open_file(label))

                ev_go.click(run_eval, [ev_sets, ev_limit, ev_modes], [files, *opened], api_visibility="private")

            with gr.Tab("Model", id="model") as model_tab:
                with gr.Row():
                    with gr.Column():
                        facts = gr.Markdown()
                        card = gr.Dataframe(headers=CARD_HEADERS, interactive=False,
                                            label="Figures from the model card (report.json)")
                    with gr.Column():
                        gr.Markdown(TEACHING)
                        gr.Markdown("**Live, on this server** (searches served since it started):")
                        live = gr.Markdown()
                        refresh = gr.Button("Refresh")
                refresh.click(h.panel, None, [facts, card, live], api_visibility="private")
                demo.load(h.panel, None, [facts, card, live], api_visibility="private")
                model_tab.select(h.panel, None, [facts, card, live], api_visibility="private")

        with gr.Row(visible=False):  # the /search API endpoint (batched), also usable from gradio_client
            # gr.JSON inputs: each value arrives as sent, so the handler refuses a wrong type instead of gradio
            # coercing it (a list stringified as text, 2.5 rounded to 2) or failing with its own message
            # (defaults are given as JSON text: gr.JSON parses a str value)
            a_text, a_ins, a_corpus = gr.JSON(None), gr.JSON(None), gr.JSON(json.dumps(ALL_MINIMMEB))
            a_image = gr.File(type="filepath")  # not gr.Image: the handler, not gradio, judges the file
            a_mode, a_visitor = gr.JSON(json.dumps("auto")), gr.JSON(None)
            a_threshold, a_k = gr.JSON(json.dumps(model.settings.default_threshold)), gr.JSON("10")
            a_out, a_go = gr.JSON(), gr.Button()
        a_go.click(h.api_search, [a_text, a_image, a_ins, a_mode, a_threshold, a_k, a_corpus, a_visitor], a_out,
                   api_name="search", queue=False)  # plain HTTP: the Batcher is the bounded queue

        def start_visitor(key):
            key, names, rows, files_now = h.visitor_start(key)
            return key, gr.update(choices=names), rows, gr.update(choices=own(names)), gr.update(choices=files_now)

        demo.load(start_visitor, visitor, [visitor, corpus, corpora, del_name, files], api_visibility="private")
    demo.msolomon_service = service
    return demo


def launch(demo: gr.Blocks, settings: DemoSettings, **kwargs: Any) -> Any:
    """Queue (bounded) and serve the page on settings.host:port. Nothing of the cache folder is served (answers,
    indexes, other visitors' uploads): images reach the page as image data that gradio copies into its own cache."""
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=2)
    return demo.launch(server_name=settings.host, server_port=settings.port, theme=THEME, css=CSS,
                       blocked_paths=[str(Path(settings.cache_dir).resolve())],
                       max_file_size=settings.limits.max_upload, footer_links=["api"], show_error=True, **kwargs)


PROG = "python app.py"


def parse_args(argv: Sequence[str] | None = None) -> DemoSettings:
    """The demo's settings from the command line (its flags are `DemoSettings`' fields)."""
    settings, _ = parse_settings(DemoSettings, argv, prog=PROG, description=__doc__.split("\n")[0], config_file=False)
    return settings


def main(argv: Sequence[str] | None = None) -> None:
    t0 = time.perf_counter()
    settings = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings.threads = process_environment(settings.threads)
    from msolomon.model import DEFAULT_MODEL_DIR, MSolomon

    model = MSolomon.from_pretrained(settings.model or DEFAULT_MODEL_DIR, adapter=settings.adapter,
                                     quantization=settings.quantization)
    from msolomon.demo.service import DemoInputError
    from msolomon.index.build import IndexBuildError

    try:
        demo = build_demo(model, settings)
    except (IndexBuildError, DemoInputError) as err:
        from msolomon.settings import usage_error

        usage_error(PROG, str(err))
    launch(demo, settings, prevent_thread_lock=True, quiet=True)
    logger.info("page up at http://%s:%d after %.1f s (%d torch threads)", settings.host, settings.port,
                time.perf_counter() - t0, settings.threads)
    try:
        demo.block_thread()
    finally:
        demo.msolomon_service.close()


if __name__ == "__main__":
    main()
