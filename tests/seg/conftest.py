"""mmseg is imported by the test modules; `seg` must install its stand-in for mmcv's compiled ops first."""
import seg  # noqa: F401
