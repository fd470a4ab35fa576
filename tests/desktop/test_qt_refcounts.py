"""Guards against a Qt binding that corrupts reference counts: PySide6 6.12.0's Signal.emit() dropped a reference
to True on every call, and the live view (one emission per frame) crashed Python 3.11 after ~20,000 frames."""
from __future__ import annotations

import sys
import threading

from PySide6.QtCore import QObject, Signal


class _Emitter(QObject):
    value = Signal(object)


def test_emitting_signals_keeps_reference_counts(qtbot):
    emitter = _Emitter()
    got = []
    emitter.value.connect(got.append)
    before_true, before_none = sys.getrefcount(True), sys.getrefcount(None)
    for i in range(300):
        emitter.value.emit(i)
    worker = threading.Thread(target=lambda: [emitter.value.emit(None) for _ in range(300)])
    worker.start()
    worker.join()
    qtbot.waitUntil(lambda: len(got) == 600)
    # Other code may take or drop a few references meanwhile; 300 lost ones per kind is the bug.
    assert sys.getrefcount(True) - before_true > -50
    assert sys.getrefcount(None) - before_none > -50
