"""Optional download of the released ELLA files from the Hugging Face hub.

Used when the user enabled it in the settings and selects a released model that is not on disk
(`ELLARuntime` calls `hub_download`), and by the Download action. The work, shared by both and
done once per process at a time, is in `downloads.py`.
"""

from __future__ import annotations

from .downloads import MANAGER, REPO, DownloadManager, hub_download

__all__ = ["MANAGER", "REPO", "DownloadManager", "hub_download"]
