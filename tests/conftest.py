"""Shared by every suite: tests/ on the path, so each can use factories.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
