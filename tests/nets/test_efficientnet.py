"""EfficientNet-Lite0: against the PyTorch reference forward, sample photos, finite differences.

The pretrained weights are converted once per session (into `$INVJAX_CACHE` if
set, else a temporary directory). Shapes are kept to the few programs that are
compiled once and shared between tests: logits of [2, 224, 224, 3] at 224,
features of [2, 32, 32, 3] resized to 48, and its gradient.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src.checks import InvjaxError
from invjax.nets import efficientnet as E
from invjax.nets import efficientnet_convert as C

_CAT_CLASSES = ("tabby, tabby cat", "tiger cat", "Persian cat", "Siamese cat, Siamese",
                "Egyptian cat")
_COFFEE_CLASSES = ("coffee mug", "espresso", "cup")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
  return os.environ.get("INVJAX_CACHE") or str(tmp_path_factory.mktemp("invjax_cache"))


@pytest.fixture(scope="session")
def variables(cache_dir):
  try:
    return C.load_pretrained(cache_dir)
  except ImportError as e:  # no cache and no torch / weights package
    pytest.skip(f"pretrained EfficientNet-Lite0 weights unavailable: {e}")


@pytest.fixture(scope="session")
def _torch_session():
  torch = pytest.importorskip("torch", reason="torch is needed for the reference forward")
  ref = pytest.importorskip("efficientnet_lite_pytorch",
                            reason="efficientnet-lite-pytorch is the reference architecture")
  state_dict = C.load_state_dict()

  def make(image_size):
    model = ref.EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    model.load_state_dict(state_dict)
    return model.eval()

  return torch, state_dict, make


@pytest.fixture
def torch_ref(_torch_session):
  """(torch, state_dict, make_model(image_size)); torch on one thread during the test (its
  thread pool spins badly on a busy 2-core machine), or skip when torch is not importable."""
  torch = _torch_session[0]
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield _torch_session
  torch.set_num_threads(threads)


def _torch_input(torch, x01):
  """NHWC [0, 1] -> NCHW with the TF-Lite normalisation (x255 - 127) / 128."""
  x = (np.asarray(x01, np.float64) * 255.0 - 127.0) / 128.0
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32))


def _random_uint8(seed, shape):
  return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_logits_match_pytorch_reference_at_224(variables, torch_ref):
  torch, _, make = torch_ref
  images = _random_uint8(0, (2, 224, 224, 3))
  got = np.asarray(E.logits(variables, images, 224))
  with torch.no_grad():
    want = make(224)(_torch_input(torch, images / 255.0)).numpy()
  assert got.shape == (2, 1000)
  np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)


def test_features_with_resize_match_pytorch_reference(variables, torch_ref):
  torch, _, make = torch_ref
  images = _random_uint8(1, (2, 32, 32, 3))
  got = np.asarray(E.features(variables, images, 48))
  with torch.no_grad():
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    x = torch.nn.functional.interpolate(x, size=(48, 48), mode="bilinear", align_corners=False)
    x = (x * 255.0 - 127.0) / 128.0
    want = make(48).extract_features(x).mean(dim=(2, 3)).numpy()
  assert got.shape == (2, E.FEATURE_DIM)
  np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)


def _center_square(image, size):
  from skimage.transform import resize  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  s = min(h, w)
  crop = image[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
  out = resize(crop, (size, size), order=1, anti_aliasing=True, preserve_range=True)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def test_sample_photos_land_on_the_right_imagenet_classes(variables):
  skdata = pytest.importorskip("skimage.data")
  names = E.imagenet_class_names()
  assert len(names) == 1000 and names[0] == "tench, Tinca tinca"
  assert names[281] == "tabby, tabby cat" and names[504] == "coffee mug"
  images = np.stack([_center_square(skdata.chelsea(), 224), _center_square(skdata.coffee(), 224)])
  out = np.asarray(E.logits(variables, images, 224))
  top5 = [[names[i] for i in np.argsort(-row)[:5]] for row in out]
  assert set(top5[0]) & set(_CAT_CLASSES), f"chelsea (a cat) -> {top5[0]}"
  assert set(top5[1]) & set(_COFFEE_CLASSES), f"coffee -> {top5[1]}"
  assert top5[0][0] in _CAT_CLASSES and top5[1][0] in _COFFEE_CLASSES


def test_features_gradient_matches_finite_difference_and_reference(variables, torch_ref):
  """jax.grad of a linear function of the features w.r.t. the pixels (resized 32 -> 40) vs
  (a) a float64 central finite difference of the PyTorch reference forward in a random
  direction, (b) the reference's autograd gradient, element by element."""
  torch, _, make = torch_ref
  rng = np.random.default_rng(4)
  x = rng.uniform(0.1, 0.9, size=(1, 32, 32, 3)).astype(np.float32)
  w = rng.normal(size=(1, E.FEATURE_DIM)).astype(np.float32)
  d = rng.normal(size=x.shape)
  d /= np.linalg.norm(d)

  value, grad = jax.value_and_grad(
      lambda x01: jnp.sum(w * E.features_from_float(variables, x01, 40)))(jnp.asarray(x))
  grad = np.asarray(grad)
  assert grad.shape == x.shape and np.all(np.isfinite(grad)) and np.isfinite(float(value))

  model = make(40)

  def ref(x01):  # NHWC [0, 1] -> sum(w * features), in the dtype of x01
    t = x01.permute(0, 3, 1, 2)
    t = torch.nn.functional.interpolate(t, size=(40, 40), mode="bilinear", align_corners=False)
    feats = model.extract_features((t * 255.0 - 127.0) / 128.0).mean(dim=(2, 3))
    return (torch.from_numpy(w).to(x01.dtype) * feats).sum()

  x32 = torch.from_numpy(x).requires_grad_(True)
  (ref_grad,) = torch.autograd.grad(ref(x32), x32)
  ref_grad = ref_grad.numpy()
  np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=2e-3 * np.abs(ref_grad).max())

  model.double()  # float64: the difference quotient is exact to ~1e-6 with a tiny step
  h = 1e-5
  with torch.no_grad():
    x64, d64 = torch.from_numpy(x.astype(np.float64)), torch.from_numpy(d)
    fd = float((ref(x64 + h * d64) - ref(x64 - h * d64)) / (2 * h))
  np.testing.assert_allclose(float(np.vdot(grad, d)), fd, rtol=2e-3)


def test_batched_features_shape_and_padding(variables):
  images = _random_uint8(1, (5, 32, 32, 3))
  out = E.batched_features(variables, images, 48, batch_size=2, progress=False)
  assert out.shape == (5, E.FEATURE_DIM) and out.dtype == np.float32
  assert np.all(np.isfinite(out)) and np.all(out >= 0) and np.all(out <= 6)  # pooled ReLU6
  want = np.concatenate([np.asarray(E.features(variables, images[i:i + 2], 48)) for i in (0, 2)]
                        + [np.asarray(E.features(variables, images[3:5], 48))[1:]])
  # float32 rounding only (another compiled program: uint8 input, padded last batch)
  np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)
  floats = E.batched_features(variables, images[:2] / 255.0, 48, batch_size=2, progress=False)
  np.testing.assert_allclose(floats, out[:2], atol=1e-5, rtol=1e-5)


def test_cache_round_trip_is_exact_without_pickle(variables, cache_dir, tmp_path):
  path = C.cache_path(cache_dir)
  assert os.path.exists(path)
  with np.load(path, allow_pickle=False) as data:  # plain arrays only
    assert all(data[k].dtype != object for k in data.files)
  again = C.load_pretrained(cache_dir)
  copy = C.load_variables(C.save_variables(again, str(tmp_path / "copy.npz")))
  leaves = jax.tree_util.tree_leaves_with_path(variables)
  assert len(leaves) == len(jax.tree_util.tree_leaves(copy)) == 5 * (1 + 1 + 16 * 3 - 1) + 2
  for p, leaf in leaves:
    for other in (again, copy):
      got = other
      for k in p:
        got = got[k.key]
      np.testing.assert_array_equal(np.asarray(got), np.asarray(leaf), err_msg=str(p))
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_converter_layouts_and_key_errors(torch_ref):
  _, state_dict, _ = torch_ref
  sd = {k: v.numpy() for k, v in state_dict.items()}
  v = C.convert_state_dict(sd)
  dw = sd["_blocks.3._depthwise_conv.weight"]  # [C, 1, k, k]
  np.testing.assert_array_equal(v["params"]["blocks_3"]["depthwise"]["kernel"][1, 2, 0, 7],
                                dw[7, 0, 1, 2])
  pw = sd["_blocks.3._expand_conv.weight"]  # [O, I, 1, 1]
  np.testing.assert_array_equal(v["params"]["blocks_3"]["expand"]["kernel"][0, 0, 5, 9],
                                pw[9, 5, 0, 0])
  np.testing.assert_array_equal(v["params"]["fc"]["kernel"][3, 11], sd["_fc.weight"][11, 3])
  np.testing.assert_array_equal(v["batch_stats"]["head"]["var"], sd["_bn1.running_var"])
  with pytest.raises(InvjaxError, match="lacks '_fc.bias'"):
    C.convert_state_dict({k: a for k, a in sd.items() if k != "_fc.bias"})
  with pytest.raises(InvjaxError, match="does not use"):
    C.convert_state_dict({**sd, "_extra.weight": np.zeros(3)})
  with pytest.raises(InvjaxError, match="wrong shapes"):
    C.convert_state_dict({**sd, "_fc.bias": np.zeros(10)})


def test_bad_inputs_raise_clear_errors(variables, tmp_path):
  u8 = np.zeros((1, 32, 32, 3), np.uint8)
  with pytest.raises(InvjaxError, match="uint8.*features_from_float"):
    E.features(variables, u8.astype(np.float32), None)
  with pytest.raises(InvjaxError, match="3 channels"):
    E.features(variables, np.zeros((1, 32, 32, 1), np.uint8), None)
  with pytest.raises(InvjaxError, match="rank 4"):
    E.features(variables, np.zeros((32, 32, 3), np.uint8), None)
  with pytest.raises(InvjaxError, match="resolution"):
    E.features(variables, u8, 0)
  with pytest.raises(InvjaxError, match="resolution"):
    E.logits(variables, u8, 2.5)
  with pytest.raises(InvjaxError, match=r"\[0.0, 1.0\]"):
    E.features_from_float(variables, np.full((1, 32, 32, 3), 2.0, np.float32), None)
  with pytest.raises(InvjaxError, match="NaN"):
    E.logits_from_float(variables, np.full((1, 32, 32, 3), np.nan, np.float32), None)
  with pytest.raises(InvjaxError, match="floating-point"):
    E.features_from_float(variables, u8, None)
  with pytest.raises(InvjaxError, match="params"):
    E.features({"params": variables["params"]}, u8, None)
  with pytest.raises(InvjaxError, match="batch_size"):
    E.batched_features(variables, u8, None, batch_size=0)
  bogus = tmp_path / "bogus.npz"
  np.savez(bogus, a=np.zeros(3))
  with pytest.raises(InvjaxError, match="not an invjax EfficientNet-Lite0 cache"):
    C.load_variables(str(bogus))


@pytest.mark.parametrize("shape,k,stride,depthwise", [
    ((2, 9, 9, 8), 3, 2, True), ((2, 8, 8, 8), 5, 2, True), ((1, 7, 6, 8), 5, 1, True),
    ((2, 9, 9, 8), 1, 1, False), ((2, 9, 8, 5), 3, 2, False)])
def test_conv_same_matches_xla_convolution(shape, k, stride, depthwise):
  rng = np.random.default_rng(5)
  x = rng.normal(size=shape).astype(np.float32)
  c = shape[-1]
  kernel = rng.normal(size=(k, k, 1, c) if depthwise else (k, k, c, 6)).astype(np.float32)
  ct = rng.normal(size=(shape[0], -(-shape[1] // stride), -(-shape[2] // stride),
                        c if depthwise else 6)).astype(np.float32)

  def ours(x, kernel):
    return E.conv_same(x, kernel, stride, depthwise)

  def xla(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c if depthwise else 1, precision="highest")

  def value_and_vjp(fn):  # output and the gradients w.r.t. (x, kernel) of <ct, output>
    out, vjp = jax.vjp(fn, x, kernel)
    return (out,) + vjp(ct)

  got = jax.jit(lambda: value_and_vjp(ours))()
  want = jax.jit(lambda: value_and_vjp(xla))()
  for g, w_, what in zip(got, want, ("output", "d/dx", "d/dkernel")):
    assert g.shape == w_.shape, what
    np.testing.assert_allclose(np.asarray(g), np.asarray(w_), atol=1e-4, rtol=1e-4,
                               err_msg=what)


def test_train_mode_batchnorm_matches_pytorch(torch_ref):
  """ConvBN(train=True): batch statistics and running-stat updates as torch BatchNorm2d."""
  torch = torch_ref[0]
  rng = np.random.default_rng(6)
  x = rng.normal(size=(4, 9, 9, 8)).astype(np.float32)
  layer = E.ConvBN(8, 3, 2, depthwise=True)
  u = lambda *shape: rng.uniform(0.5, 1.5, shape).astype(np.float32)
  v = {"params": {"kernel": u(3, 3, 1, 8), "scale": u(8), "bias": u(8)},
       "batch_stats": {"mean": u(8), "var": u(8)}}
  got, updates = jax.jit(lambda v, x: layer.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)

  kernel = np.asarray(v["params"]["kernel"])  # [3, 3, 1, 8] -> [8, 1, 3, 3]
  bn = torch.nn.BatchNorm2d(8, eps=E.BN_EPSILON, momentum=1 - E.BN_MOMENTUM)
  with torch.no_grad():
    bn.weight.copy_(torch.from_numpy(np.asarray(v["params"]["scale"])))
    bn.bias.copy_(torch.from_numpy(np.asarray(v["params"]["bias"])))
    bn.running_mean.copy_(torch.from_numpy(np.asarray(v["batch_stats"]["mean"])))
    bn.running_var.copy_(torch.from_numpy(np.asarray(v["batch_stats"]["var"])))
    t = torch.nn.functional.pad(torch.from_numpy(x.transpose(0, 3, 1, 2)), (1, 1, 1, 1))  # TF SAME
    t = torch.nn.functional.conv2d(t, torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()),
                                   stride=2, groups=8)
    want = bn.train()(t).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(updates["batch_stats"]["mean"]),
                             bn.running_mean.numpy(), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(updates["batch_stats"]["var"]),
                             bn.running_var.numpy(), atol=1e-5, rtol=1e-5)
  # Inference mode folds the running statistics into the convolution.
  folded = jax.jit(layer.apply)(v, x)
  bn.eval()
  with torch.no_grad():
    bn.running_mean.copy_(torch.from_numpy(np.asarray(v["batch_stats"]["mean"])))
    bn.running_var.copy_(torch.from_numpy(np.asarray(v["batch_stats"]["var"])))
    want_eval = bn(t).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(folded), want_eval, atol=1e-4, rtol=1e-4)
