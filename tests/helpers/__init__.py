"""Code the tests share, written once: paths, the CLI runner, the one-line-error checks, finite
differences and the independent torch.func reference of the meta-gradient.

Plain functions and classes, no fixtures (those live in tests/conftest.py). Tests import them as
`from helpers.cli import Cli`: tests/ is on sys.path because tests/conftest.py lives there.
"""
