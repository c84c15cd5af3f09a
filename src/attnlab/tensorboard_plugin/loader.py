"""The entry point TensorBoard imports at start-up (pyproject.toml, `tensorboard_plugins`).

Kept to TensorBoard's own base class: an import error in an entry point's module stops TensorBoard from starting at
all, while an exception in a loader's load() only leaves the tab out (TensorBoard logs "Failed to load plugin").
"""

from tensorboard.plugins import base_plugin


class AttentionPluginLoader(base_plugin.TBLoader):
    def load(self, context):
        from attnlab.tensorboard_plugin.plugin import AttentionPlugin

        return AttentionPlugin(context)
