"""ProtoLabel's desktop application (PySide6). Threads live here and only here; the engine is core/."""
