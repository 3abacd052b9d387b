"""A dark theme for dim booths: high-contrast text, one colour per stem used everywhere."""

from __future__ import annotations

from PyQt6.QtGui import QColor, QPalette
from PyQt6.QtWidgets import QApplication

STEM_COLOURS = {
    "drums": "#f5a623",
    "bass": "#4a90e2",
    "other": "#7ed321",
    "vocals": "#e94b8a",
    "guitar": "#bd6bf0",
    "piano": "#50e3c2",
}
FALLBACK_COLOURS = ("#f5a623", "#4a90e2", "#7ed321", "#e94b8a", "#bd6bf0", "#50e3c2")
BACKGROUND, PANEL, TEXT, DIM_TEXT, ACCENT = "#121417", "#1c1f24", "#e8eaed", "#8a9099", "#ffb300"
ERROR_BACKGROUND, NOTE_BACKGROUND = "#5c1f24", "#1f3a5c"

STYLESHEET = f"""
QWidget {{ background: {BACKGROUND}; color: {TEXT}; font-size: 11pt; }}
QFrame#panel {{ background: {PANEL}; border-radius: 8px; }}
QPushButton {{ background: #2a2e35; border: 1px solid #3a3f47; border-radius: 6px; padding: 6px 12px;
              min-height: 28px; }}
QPushButton:hover {{ border-color: {ACCENT}; }}
QPushButton:checked {{ background: {ACCENT}; color: #000; font-weight: bold; }}
QPushButton:disabled {{ color: #555; }}
QPushButton#mute:checked {{ background: #e53935; color: #fff; }}
QPushButton#solo:checked {{ background: #fdd835; color: #000; }}
QPushButton#hotcue, QPushButton#glyph {{ padding: 4px 0; }}
QPushButton#hotcue:checked {{ background: #26c6da; color: #000; }}
QPushButton#record:checked {{ background: #e53935; color: #fff; }}
QComboBox, QDoubleSpinBox {{ background: #2a2e35; border: 1px solid #3a3f47; border-radius: 6px; padding: 4px 8px;
                             min-height: 26px; }}
QComboBox:disabled, QDoubleSpinBox:disabled {{ color: #555; background: {PANEL}; border-color: #2a2e35; }}
QLabel#stemName {{ font-size: 13pt; font-weight: bold; }}
QLabel#time {{ font-family: monospace; font-size: 14pt; }}
QFrame#banner {{ background: {ERROR_BACKGROUND}; border-radius: 6px; }}
QFrame#note {{ background: {NOTE_BACKGROUND}; border-radius: 6px; }}
QFrame#banner QLabel, QFrame#note QLabel {{ background: transparent; }}
QStatusBar {{ background: {PANEL}; color: {DIM_TEXT}; font-size: 10pt; }}
QStatusBar::item {{ border: 0; }}
QStatusBar QLabel {{ background: transparent; color: {DIM_TEXT}; font-size: 10pt; padding: 0 4px; }}
QSlider::groove:vertical {{ background: #2a2e35; width: 8px; border-radius: 4px; }}
QSlider::handle:vertical {{ background: {TEXT}; height: 22px; margin: 0 -12px; border-radius: 4px; }}
QSlider::groove:horizontal {{ background: #2a2e35; height: 8px; border-radius: 4px; }}
QSlider::handle:horizontal {{ background: {TEXT}; width: 22px; margin: -8px 0; border-radius: 4px; }}
QTabWidget::pane {{ border: 0; }}
QTabBar::tab {{ background: {PANEL}; padding: 8px 16px; border-top-left-radius: 6px; border-top-right-radius: 6px; }}
QTabBar::tab:selected {{ background: #2a2e35; color: {ACCENT}; }}
"""


def checked_text_is_bold() -> bool:
    """Whether the app wears this theme, whose checked buttons show their text in bold."""
    app = QApplication.instance()
    return app is not None and app.styleSheet() == STYLESHEET


def stem_colour(name: str, index: int) -> QColor:
    return QColor(STEM_COLOURS.get(name, FALLBACK_COLOURS[index % len(FALLBACK_COLOURS)]))


def apply_theme(app: QApplication) -> None:
    app.setStyle("Fusion")
    palette = QPalette()
    for role, colour in (
        (QPalette.ColorRole.Window, BACKGROUND),
        (QPalette.ColorRole.Base, PANEL),
        (QPalette.ColorRole.Text, TEXT),
        (QPalette.ColorRole.WindowText, TEXT),
        (QPalette.ColorRole.Button, "#2a2e35"),
        (QPalette.ColorRole.ButtonText, TEXT),
        (QPalette.ColorRole.Highlight, ACCENT),
        (QPalette.ColorRole.ToolTipBase, PANEL),
        (QPalette.ColorRole.ToolTipText, TEXT),
    ):
        palette.setColor(role, QColor(colour))
    app.setPalette(palette)
    app.setStyleSheet(STYLESHEET)
