import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))

import fleetlab


def pytest_terminal_summary(terminalreporter):
    fleetlab.print_report(terminalreporter)
