"""Views: terminal tables, Markdown, the HTML report and comparison page, JUnit, progress.

They format what bench.analysis computed (bench.views.format holds the one set of formatters)
and never compute a figure of their own, nor import the engine or the CLI.
"""
