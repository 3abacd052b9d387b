"""What runs in the audio thread: the callbacks, the mixer and ring kernels, the shared state the
callback owns, and the JACK client's process callback. Nothing here imports torch, allocates in
the callback, or waits on the worker."""
