"""Model reports: plots (ROC, precision-recall, reliability, score distributions, learning curves) and report.md.

`widedeep.report.plots` draws figures from numbers (matplotlib, the `plots` extra); `widedeep.report.writer` scores a
model and publishes the report folder.
"""
