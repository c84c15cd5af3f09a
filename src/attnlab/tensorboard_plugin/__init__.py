"""The Attention tab: a TensorBoard plugin ("attnlab") showing the probe example's attention per head, with token
labels, for every run and logged step, and each head's QK/OV circuits.

    summary.py  what training writes (on the background writer): one frame of tensor summaries per logged step
    loader.py   what TensorBoard imports at start-up (the entry point): nothing but TensorBoard's base classes
    plugin.py   the routes the tab's page asks, reading the frames through TensorBoard's data provider
    static/     the page: plain ES modules and CSS, served by plugin.py, no build step

Nothing here is imported by `import attnlab.tensorboard_plugin` itself: TensorBoard imports this package to reach the
loader, and the training side imports summary.py only.
"""
