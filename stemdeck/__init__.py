"""The ``stemdeck`` program: the one place where the command line is put together.

It sits above the three packages it wires (``models``, ``engine``, ``gui``); none of them imports it.
"""
