"""Judges of read-only probes: what a probe's output means, in one line naming the real place."""

from __future__ import annotations

from recipes.ops import NotMountPoint


def test_a_mount_point_behind_a_symlink_is_named_with_the_link() -> None:
    """DATA_DIR as a symlink to a volume's mount point (the usual setup): the line names both
    the configured path and the mount point the probe found, not the link as the mount point."""
    judge = NotMountPoint("/home/dataiku/dss_data")
    assert judge.judge("", 0, {}, False) is None
    direct = judge.judge("mount-point /home/dataiku/dss_data\n", 0, {}, False)
    assert direct is not None and direct.startswith("/home/dataiku/dss_data is a mount point holding files")
    linked = judge.judge("mount-point /vol/dss\n", 0, {}, False)
    assert linked is not None and linked.startswith(
        "/home/dataiku/dss_data is a symlink to /vol/dss, which is a mount point holding files"
    )
