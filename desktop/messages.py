"""What the window tells the person: one message model, the bar above the views, and the Messages list.

Every message has a cause (a job such as "save" or "fine-tune", "source", "background"). A message is active
until its cause is resolved (the source opens again, the next save succeeds) or a newer message of the same
cause replaces it; the bar shows the newest active one. Errors about a state that persists (a camera gone,
an autosave that failed) stay on the bar until then; other messages leave the bar after a while. Everything
said stays in the Messages list (Help > Messages…) with its time, so a result nobody was looking at when it
came is still there afterwards.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QToolButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

FADE_S = {"info": 12.0, "warning": 30.0, "error": 30.0}  # on the bar; sticky messages stay
HISTORY = 1000  # messages kept in the list


@dataclass(frozen=True)
class Notice:
    seq: int
    time: float  # time.time()
    cause: str
    level: str  # "info" | "warning" | "error"
    text: str
    sticky: bool = False  # stays on the bar until its cause is resolved or replaced, or it is closed


class MessageLog(QObject):
    """The messages of this session (newest last) and which of them are still active, one per cause."""

    changed = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.notices: list[Notice] = []
        self.active: dict[str, Notice] = {}
        self._seq = 0

    def post(self, cause: str, level: str, text: str, sticky: bool = False, activate: bool = True) -> Notice:
        """A new message; activate False: only into the list, the bar keeps what it shows."""
        self._seq += 1
        notice = Notice(self._seq, time.time(), cause, level, text, sticky)
        self.notices.append(notice)
        del self.notices[:-HISTORY]
        if activate:
            self.active[cause] = notice
        self.changed.emit()
        return notice

    def resolve(self, cause: str) -> None:
        """The cause is gone (or starts over): its message leaves the bar; the list keeps it."""
        if self.active.pop(cause, None) is not None:
            self.changed.emit()

    def dismiss(self, notice: Notice) -> None:
        if self.active.get(notice.cause) is notice:
            del self.active[notice.cause]
            self.changed.emit()

    def current(self) -> Notice | None:
        """The newest active message."""
        return max(self.active.values(), key=lambda n: n.seq, default=None)


class MessageBar(QFrame):
    """The newest active message above the views, with ✕ to close it; non-sticky ones leave after FADE_S."""

    COLORS = {"error": "#b3261e", "warning": "#8a6d00", "info": "#2e5d8a"}

    def __init__(self, log: MessageLog, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.log = log
        self.notice: Notice | None = None
        self.label = QLabel(wordWrap=True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QToolButton(text="✕", autoRaise=True, toolTip="Close (it stays in Help > Messages…)")
        close.clicked.connect(self._on_close_clicked)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(10, 4, 4, 4)
        lay.addWidget(self.label, 1)
        lay.addWidget(close)
        self._timer = QTimer(self, singleShot=True, timeout=self._on_timer)
        log.changed.connect(self._on_log_changed)
        self.hide()

    def _on_log_changed(self) -> None:
        notice = self.log.current()
        if notice is self.notice:
            return
        self.notice = notice
        self._timer.stop()
        if notice is None:
            self.hide()
            return
        self.setStyleSheet(f"MessageBar {{ background: {self.COLORS.get(notice.level, '#2e5d8a')}; "
                           "border-radius: 4px; } QLabel, QToolButton { color: white; }")
        self.label.setText(notice.text)
        self.show()
        if not notice.sticky:
            left = FADE_S.get(notice.level, FADE_S["info"]) - (time.time() - notice.time)
            self._timer.start(max(0, int(left * 1000)))

    def _on_timer(self) -> None:
        if self.notice is not None:
            self.log.dismiss(self.notice)

    def _on_close_clicked(self) -> None:
        self._on_timer()


class MessagesDialog(QDialog):
    """Every message of this session with its time, newest first; Copy puts them on the clipboard."""

    def __init__(self, log: MessageLog, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Messages")
        self.log = log
        self.tree = QTreeWidget(rootIsDecorated=False, uniformRowHeights=False, wordWrap=True)
        self.tree.setHeaderLabels(["Time", "", "Message"])
        header = self.tree.header()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        copy = buttons.addButton("Copy all", QDialogButtonBox.ButtonRole.ActionRole)
        copy.clicked.connect(lambda: QGuiApplication.clipboard().setText(self.text()))
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(self.tree)
        lay.addWidget(buttons)
        self.resize(720, 360)
        log.changed.connect(self._on_log_changed)
        self.refresh()

    def _on_log_changed(self) -> None:
        if self.isVisible():  # a hidden list is rebuilt when it is shown
            self.refresh()

    def showEvent(self, event) -> None:
        self.refresh()
        super().showEvent(event)

    def refresh(self) -> None:
        self.tree.clear()
        for n in reversed(self.log.notices):
            item = QTreeWidgetItem([time.strftime("%H:%M:%S", time.localtime(n.time)), n.level, n.text])
            item.setToolTip(2, n.text)
            self.tree.addTopLevelItem(item)

    def text(self) -> str:
        return "\n".join(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(n.time))}\t{n.level}\t{n.text}"
                         for n in self.log.notices)
