"""``wavegen``: the command line of WaveNet over 8-bit mu-law audio (speech, spoken digits, a mel vocoder).

``fit | validate | test | predict`` are LightningCLI's (:mod:`arcore.cli`, configs in ``lightning_configs/``),
``export`` is shared with ``pixelgen``, ``sample`` writes WAV files (:mod:`wavegen.sample_cli`), and
``griffin-lim`` resynthesises audio from its own log-mel frames with no model (:mod:`wavegen.griffinlim`). This
module imports neither torch nor Lightning, so ``wavegen --help`` and each command's ``--help`` print at once
(:mod:`arcore.cli.launch`)::

    wavegen sample --ckpt pretrained/wavenet_speech.safetensors --seconds 2 --out clip.wav
    wavegen sample --ckpt pretrained/wavenet_vocoder.safetensors --mel-from docs/wavenet_vocoder_original.wav \
        --out resynth.wav
    wavegen griffin-lim --mel-from docs/wavenet_vocoder_original.wav --n-mels 20 --out griffin_lim.wav
    wavegen fit --config lightning_configs/wavenet_speech.yaml --data.root DIR
    wavegen test --config lightning_configs/wavenet_speech.yaml --data.root DIR --ckpt_path last
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from arcore.cli.launch import Command, SampleHelp, Tool, sample_parser

ABOUT = "WaveNet over 8-bit mu-law audio: speech, spoken digits, and a vocoder that resynthesises log-mel frames."
SAMPLE = "generate WAV clips, or resynthesise audio from its log-mel frames, from a checkpoint or a .safetensors file"
GRIFFIN_LIM = "resynthesise audio from its own log-mel frames with no model: the classical inversion to beat"
EXAMPLES = ("wavegen sample --ckpt pretrained/wavenet_speech.safetensors --seconds 2 --out clip.wav",
            ("wavegen sample --ckpt pretrained/wavenet_vocoder.safetensors --mel-from "
             "docs/wavenet_vocoder_original.wav --out resynth.wav"),
            "wavegen griffin-lim --mel-from docs/wavenet_vocoder_original.wav --n-mels 20 --out griffin_lim.wav")
"""The commands ``wavegen --help`` suggests: each runs as written from the project's folder."""


def _parser() -> argparse.ArgumentParser:
    p = sample_parser("wavegen", SAMPLE, num_samples=1, batch_size=16, threads=1,
                      out_help="output .wav (clip_0.wav, clip_1.wav, ... when --num-samples > 1); a folder when "
                               "--mel-from names several files or a folder (one WAV per input, named after it)")
    p.add_argument("--seconds", type=float, default=None,
                   help="length of each clip (default: 2, or the length of each --mel-from input)")
    p.add_argument("--prime", default=None, help="an audio file whose start the clips continue (default: none)")
    p.add_argument("--prime-seconds", type=float, default=0.5, help="how much of --prime the clips continue")
    p.add_argument("--speaker", type=int, default=None,
                   help="the speaker id, for a speaker-conditioned model (default: none)")
    p.add_argument("--mel-from", nargs="+", default=None,
                   help="audio files or folders (searched recursively) whose log-mel frames condition a vocoder "
                        "model (e.g. docs/wavenet_vocoder_original.wav): each input is resynthesised, as long as it "
                        "is (or --seconds) (default: none)")
    p.add_argument("--half-weights", action="store_true",
                   help="round the network's weights to float16 values first: the fused CPU step then holds them in "
                        "half the bytes (about 2x faster where the float32 weights overflow the L2 cache; the "
                        "shipped models' likelihoods moved in the sixth decimal)")
    return p


def _griffin_lim_parser() -> argparse.ArgumentParser:
    """The options of ``wavegen griffin-lim`` (:func:`wavegen.sample_cli.griffin_lim`)."""
    p = argparse.ArgumentParser(prog="wavegen griffin-lim", description=GRIFFIN_LIM, formatter_class=SampleHelp)
    p.add_argument("--mel-from", nargs="+", required=True,
                   help="audio files or folders (searched recursively), each resynthesised from its own log-mel "
                        "frames (e.g. docs/wavenet_vocoder_original.wav)")
    p.add_argument("--out", required=True,
                   help="output .wav; a folder when --mel-from names several files or a folder (one WAV per input, "
                        "named after it)")
    p.add_argument("--n-mels", type=int, default=80, help="mel bands per frame")
    p.add_argument("--hop-length", type=int, default=80, help="samples from one frame to the next")
    p.add_argument("--n-fft", type=int, default=None,
                   help="the STFT window in samples (default: 4 x --hop-length, as the vocoders' frames)")
    p.add_argument("--sample-rate", type=int, default=8000,
                   help="the rate the inputs are resampled to, and of the output")
    p.add_argument("--method", choices=("mel", "least-squares"), default="mel",
                   help="mel: match every frame's band powers, then make the STFT consistent, alternately; "
                        "least-squares: torchaudio's InverseMelScale, then its GriffinLim")
    p.add_argument("--iterations", type=int, default=100, help="Griffin-Lim rounds")
    p.add_argument("--momentum", type=float, default=0.99, help="fast Griffin-Lim's momentum, in [0, 1)")
    p.add_argument("--seed", type=int, default=0,
                   help="the seed of the random starting phase (mel): the same seed, the same audio")
    p.add_argument("--seconds", type=float, default=None,
                   help="resynthesise each input's first SECONDS (default: all of it)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    return p


TOOL = Tool("wavegen", ABOUT, SAMPLE, EXAMPLES, _parser, sample_run="wavegen.sample_cli:sample",
            data_module="wavegen.data:AudioDataModule",
            commands={"griffin-lim": Command(GRIFFIN_LIM, _griffin_lim_parser, "wavegen.sample_cli:griffin_lim")})


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``wavegen``; returns the exit status (2 with one error line for bad input)."""
    return TOOL.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
