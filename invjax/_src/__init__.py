"""Internals of invjax: compilation (jit with CPU options), the convolution primitive, loops,
atomic file writes, input checks, ball geometry, log filters.

Not a public API: modules here may change between releases. The names users need are
re-exported where they belong (`invjax.InvjaxError`, `invjax.ConvergenceError`).
"""
