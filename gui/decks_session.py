"""The two-deck window's side of the engine: one :class:`~engine.decks.Decks`, changed only on
the session's job thread (model, files, output), as :class:`gui.session.Session` does for one deck.

The GUI thread only calls the decks' control API (cheap, never waits on the audio callback)
and reads ``decks.status()``; results and errors come back as Qt signals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PyQt6.QtCore import pyqtSignal

from stemdeck.gui.session import BLOCK_FRAMES, Session, Track, carry_stem_mixer, overview_peaks


class DecksSession(Session):
    """Two decks of one model; ``deck_ready(index, Track)`` after each load."""

    decks_ready = pyqtSignal(tuple)  # sources
    deck_ready = pyqtSignal(int, object)  # deck 0/1, Track
    output_opened = pyqtSignal()  # the decks' output (re)opened: whether it has a cue pair may have changed

    def __init__(self, config=None, model_loader=None):
        super().__init__(config, model_loader)
        self.decks = None
        self.tracks: list[Track | None] = [None, None]

    def start(self, name: str | None) -> None:
        """Load the model and build both decks (their output opened unless headless)."""
        self._submit(f"loading {name or 'the default model'}…", lambda: self._build_decks(name))

    def choose_model(self, name: str, preset: str | None = None) -> None:  # type: ignore[override]
        """Both decks on another model: their tracks stay loaded where they were, their mixer
        as it was, and separate again. Refused while a deck plays (its music would stop)."""
        self._submit(f"loading {name}…", lambda: self._switch_model(name))

    def open_file(self, which: int, path: str | Path) -> None:  # type: ignore[override]
        self._submit(f"opening {Path(path).name} on deck {'AB'[which]}…", lambda: self._open_file(which, Path(path)))

    def open_array(self, which: int, audio: np.ndarray, samplerate: int, name: str) -> None:  # type: ignore[override]
        self._submit(f"loading {name}…", lambda: self._load(which, audio, samplerate, name, None))

    def set_output(self, device: str | None) -> None:
        """Both decks' output to ``device`` (None: the default): closed and opened again on the
        job thread, the tracks playing on where they were."""
        self.config.output_device = device
        if self.decks is not None and not self.config.headless:
            self._submit("opening the output…", self._restart_output)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(30)
        if self.decks is not None:
            self.decks.stop()
            self.decks = None

    # -- on the job thread ------------------------------------------------------------------------------

    def _build_decks(self, name: str | None) -> None:
        self._build_decks_of(*self._load_model(name))

    def _switch_model(self, name: str) -> None:  # type: ignore[override]
        old = self.decks
        if old is None:
            self._build_decks(name)
            return
        playing = ["AB"[index] for index in (0, 1) if old.playing(index)]
        if playing:
            raise ValueError(
                f"deck {' and '.join(playing)} is playing; pause it to switch the model (both decks separate again)"
            )
        model, name = self._load_model(name)  # one that cannot load leaves the decks as they are
        status = old.status()
        kept = [self._kept_deck(old, index) for index in (0, 1)]
        old.stop()
        self.decks = None
        self._build_decks_of(model, name, open_output=False)  # the tracks first: an output that fails keeps them
        decks = self.decks
        for index, deck in enumerate(kept):
            if deck is not None:
                audio, position_s, mixer, sources = deck
                decks.load_array(index, audio, cue_s=position_s)
                carry_stem_mixer(mixer, sources, decks.deck(index))
                self.deck_ready.emit(index, self.tracks[index])
        decks.set_crossfader_curve(status.curve)
        decks.set_crossfader(status.crossfader)
        decks.set_cue_mix(status.cue_mix)
        decks.set_master_db(status.master_db)
        for index in (0, 1):
            decks.set_volume_db(index, status.volume_db[index])
            decks.set_cue(index, status.cue[index])
        if not self.config.headless:
            self._open_output()

    def _kept_deck(self, decks, index: int):
        """What a deck takes to the new model: its track (copied out of the old decks' shared
        memory), playhead and mixer; None where it holds no track."""
        engine = decks.deck(index)
        if self.tracks[index] is None or engine.loaded_track is None:
            return None
        return engine.loaded_track.copy(), engine.status().position_s, engine.mixer(), engine.sources

    def _build_decks_of(self, model, name: str, open_output: bool = True) -> None:
        from stemdeck.engine.decks import Decks

        self.network_description = None
        decks = self._with_backend(
            lambda backend: Decks.build(
                model,
                samplerate=self._device_rate(),
                block_frames=BLOCK_FRAMES,
                precision=self.config.precision,
                worker=self.config.worker,
                network_backend=backend,
                note=self._hear,
            )
        )
        self.decks, self.model_name = decks, name
        self.decks_ready.emit(tuple(model.sources))  # the strips show even where no output opens (its error says why)
        if open_output and not self.config.headless:
            self._open_output()

    def _restart_output(self) -> None:
        self.decks.stop_output()
        self._open_output()

    def _open_output(self) -> None:
        from stemdeck.engine.device import resolve_device

        decks = self.decks
        decks.notices.clear()
        decks.start_output(resolve_device(self.config.output_device, "output"))
        self.output_opened.emit()
        for notice in decks.notices:  # no cue output, said once for each device
            self.failed.emit(notice)

    def _open_file(self, which: int, path: Path) -> None:
        from stemdeck.models.audio import read_audio

        audio, samplerate = read_audio(path)  # a bad file stops here: both decks play on
        self._load(which, audio, samplerate, path.name, path)

    def _load(self, which: int, audio: np.ndarray, samplerate: int, name: str, path: Path | None) -> None:
        """Into a deck that is not playing (the decks refuse the playing one: DeckBusy's message)."""
        from stemdeck.models.separate import match_channels, resample

        if self.decks is None:
            raise ValueError("no model is loaded yet; wait for it, then load the track")
        rate, channels = self.decks.samplerate, self.decks.channels
        audio = np.ascontiguousarray(match_channels(resample(audio, samplerate, rate), channels), dtype=np.float32)
        self.decks.load_array(which, audio)
        track = Track(path, name, audio.shape[-1] / rate, overview_peaks(audio))
        self.tracks[which] = track
        self.deck_ready.emit(which, track)


class DecksControls:
    """The session's decks for the MIDI controller, whenever they exist (MIDI starts before the
    model has loaded). ``deck`` is a class attribute: the controller asks the class whether it
    drives two decks, so the answer never waits for a model."""

    def __init__(self, session: DecksSession):
        self._session = session

    @property
    def sources(self) -> tuple[str, ...]:
        decks = self._session.decks
        return decks.sources if decks is not None else ()

    def _decks(self):
        decks = self._session.decks
        if decks is None:
            raise ValueError("no model is loaded yet")
        return decks

    def deck(self, which):
        return self._decks().deck(which)

    def __getattr__(self, name):
        return getattr(self._decks(), name)
