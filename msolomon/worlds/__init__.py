"""Worlds: the small image worlds (drawn scenes, digits, charts, forms and signs, garments, sample photos), each with
its renderers and the builders that turn seeded draws into query/answer items. They live apart from the benchmark
(`msolomon.data.minimmeb`) because more than one kind of data is drawn from them, and one world must draw the same
way for all of them.

`canvas` and `common` hold what the families share; the rest is one module per family.
"""
