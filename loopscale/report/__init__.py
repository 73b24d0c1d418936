"""`loopscale report`: one sweep as an HTML file and the same tables as Markdown.

Imports flow one way: :mod:`~loopscale.report.data` (what a report holds) ← :mod:`~loopscale.report.build`
(gather a sweep into it); data and :mod:`~loopscale.report.blocks` ← :mod:`~loopscale.report.sections`
(lay it out) ← :mod:`~loopscale.report.html` and :mod:`~loopscale.report.md` (render it) ←
:mod:`~loopscale.report.write` (write both files).
"""
