"""The embedded backbone's own pieces: spatial keypoints and the prefix layout."""

import torch

from vla.backbone.embedded import SpatialKeypoints


def test_keypoint_follows_the_feature_it_detects():
    n_cam, channels, k = 2, 8, 3
    kp = SpatialKeypoints(n_cam, channels, k, width=2 * k)
    with torch.no_grad():
        kp.detect.zero_()
        kp.detect[:, 0, 0] = 10.0  # detector 0 of each camera fires on channel 0
        kp.proj.copy_(torch.eye(2 * k).expand(n_cam, -1, -1))  # expose the raw (x, y) of every keypoint
        kp.proj_bias.zero_()
    grid = torch.linspace(-1, 1, 12)
    fmap = torch.zeros(1, n_cam, channels, 12, 12)
    fmap[0, 0, 0, 2, 9] = 10.0   # camera 0: the feature at row 2, column 9
    fmap[0, 1, 0, 11, 0] = 10.0  # camera 1: bottom-left corner
    points = kp(fmap)[0].view(n_cam, k, 2)
    torch.testing.assert_close(points[0, 0], torch.stack([grid[9], grid[2]]), atol=1e-3, rtol=0)
    torch.testing.assert_close(points[1, 0], torch.stack([grid[0], grid[11]]), atol=1e-3, rtol=0)
    # detectors with no feature to follow sit at the centre of mass of a uniform softmax
    torch.testing.assert_close(points[:, 1:], torch.zeros(n_cam, k - 1, 2), atol=1e-5, rtol=0)


def test_keypoints_are_differentiable_through_a_channels_last_map():
    kp = SpatialKeypoints(1, 8, 4, width=16)
    fmap = torch.randn(3, 1, 8, 6, 6)
    out = kp(fmap.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (3, 1)))
    out.square().sum().backward()
    assert kp.detect.grad is not None and torch.isfinite(kp.detect.grad).all()


def test_cache_key_says_whether_the_keypoint_map_is_cached():
    from vla.backbone.base import BackboneConfig
    from vla.backbone.embedded import EmbeddedBackbone

    with_map = EmbeddedBackbone(BackboneConfig(keypoints=32), width=8, n_obs_steps=1, state_dim=3)
    without = EmbeddedBackbone(BackboneConfig(keypoints=0), width=8, n_obs_steps=1, state_dim=3)
    more = EmbeddedBackbone(BackboneConfig(keypoints=8), width=8, n_obs_steps=1, state_dim=3)
    images = {c: torch.rand(1, 3, 96, 96) for c in with_map.config.cameras}
    assert "vision_map" in with_map.encode_frames(images) and "vision_map" not in without.encode_frames(images)
    assert with_map.cache_key() != without.cache_key()
    assert with_map.cache_key() == more.cache_key(), "the cached map does not depend on the number of detectors"
