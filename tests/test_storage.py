"""Direct row reads of sharded Zarr arrays, checked against zarr's own reads."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from daskmeta.exceptions import DaskmetaError
from daskmeta.storage import RowReader, read_rows

N_ROWS, N_COLS, PER_SHARD = 23, 1000, 5


def _array(path, dtype, sharded=True, compressed=True, fill_value=0):
    rng = np.random.default_rng(0)
    values = rng.random((N_ROWS, N_COLS))
    values[values < 0.7] = 0  # sparse-ish, as MA rows are
    values = (values * 300).astype(dtype)
    kwargs = {"shards": (PER_SHARD, N_COLS), "chunks": (1, N_COLS)} if sharded else {
        "chunks": (4, N_COLS)}
    compressors = (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),) if compressed else None
    arr = zarr.create_array(path, shape=values.shape, dtype=dtype, compressors=compressors,
                            fill_value=fill_value, **kwargs)
    arr[:] = values
    return values


@pytest.mark.parametrize(("dtype", "fill_value"), [(np.uint8, 0), (np.uint16, 0),
                                                   (np.float32, 0.0), (np.float32, np.nan)])
@pytest.mark.parametrize("compressed", [True, False])
def test_reads_equal_zarr(tmp_path, dtype, fill_value, compressed):
    values = _array(tmp_path / "a.zarr", dtype, compressed=compressed, fill_value=fill_value)
    reader = RowReader.open(tmp_path / "a.zarr")
    assert reader is not None and reader.rows_per_shard == PER_SHARD
    rows = [22, 0, 7, 7, 13, 4, 5, 21]  # any order, repeats, across shards
    out = reader.read(rows)
    assert out.dtype == np.dtype(dtype)
    assert np.array_equal(out, values[rows])
    assert np.array_equal(read_rows(tmp_path / "a.zarr", rows), values[rows])
    assert reader.read([]).shape == (0, N_COLS)


def test_other_layouts_are_read_through_zarr(tmp_path):
    values = _array(tmp_path / "a.zarr", np.float32, sharded=False)
    assert RowReader.open(tmp_path / "a.zarr") is None
    assert RowReader.open(tmp_path / "missing.zarr") is None
    rows = [9, 3, 4, 5, 22, 3]
    assert np.array_equal(read_rows(tmp_path / "a.zarr", rows), values[rows])


def test_unwritten_shards_and_rows_read_as_the_fill_value(tmp_path):
    path = tmp_path / "a.zarr"
    arr = zarr.create_array(path, shape=(N_ROWS, N_COLS), dtype=np.float32, chunks=(1, N_COLS),
                            shards=(PER_SHARD, N_COLS), fill_value=7.0, compressors=None)
    arr[0:PER_SHARD] = np.zeros((PER_SHARD, N_COLS), np.float32) + 1  # shard 0
    block = np.zeros((PER_SHARD, N_COLS), np.float32) + 2
    block[1] = 7.0  # row 6 equals the fill value: zarr leaves it out of shard 1
    arr[PER_SHARD:2 * PER_SHARD] = block
    rows = [0, 6, 5, 22]
    expected = arr.oindex[rows, :]
    assert np.array_equal(RowReader.open(path).read(rows), expected)
    assert expected[1, 0] == 7.0 and expected[2, 0] == 2.0 and expected[3, 0] == 7.0


def test_corrupted_or_truncated_shards_are_errors(tmp_path):
    path = tmp_path / "a.zarr"
    _array(path, np.float32)
    shard = path / "c" / "1" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # inside the shard index
    shard.write_bytes(bytes(data))
    reader = RowReader.open(path)
    with pytest.raises(DaskmetaError, match=r"c/1/0: corrupted shard"):
        reader.read([6])
    assert reader.read([0]).shape == (1, N_COLS)  # other shards still read
    other = path / "c" / "2" / "0"
    good = other.read_bytes()
    other.write_bytes(good[:20] + good[-(PER_SHARD * 16 + 4):])  # rows cut out, index kept
    with pytest.raises(DaskmetaError, match=r"c/2/0: (truncated|a row decompresses)"):
        reader.read([11])
    with pytest.raises(DaskmetaError, match="row index out of range"):
        reader.read([N_ROWS])
