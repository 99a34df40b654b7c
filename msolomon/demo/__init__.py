"""The Gradio demo's logic, kept out of `app.py` (which only lays out the page).

One job per module: `settings` (what the demo runs with), `corpus` (default and custom corpora, on-disk index
cache), `examples` (held-out benchmark queries with known answers), `batching` (concurrent searches served by one
`encode_queries` call), `service` (searching: batched, streamed, compared), `render` (HTML for results and
latencies), `explorer` (evaluation predictions), `panel` (model facts and the teaching text), `handlers` (the
page's event handlers, turning bad input into readable messages).
"""
