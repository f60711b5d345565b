"""Command-line flag, read before the WebUI parses its arguments."""


def preload(parser):
    parser.add_argument(
        "--ella-dir",
        type=str,
        default=None,
        help="Folder with ELLA models; T5 encoders go in its t5/ subfolder (default: models/ELLA).",
    )
