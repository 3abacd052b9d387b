"""Tempo and key for the deck: the time-stretch stage (a process of its own, ahead of the
playhead) and the track's beat grid."""
