"""Tempo and key for the deck: the time-stretch stage (a thread ahead of the playhead) and the
track's beat grid."""
