"""Direct row reads of sharded Zarr arrays, checked against zarr's own reads."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from daskmeta.exceptions import DaskmetaError
from daskmeta.storage import ShardedRows, read_rows, read_vector, scratch_rows, write_shard

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
    reader = ShardedRows.open(tmp_path / "a.zarr")
    assert reader is not None and reader.rows_per_shard == PER_SHARD
    rows = [22, 0, 7, 7, 13, 4, 5, 21]  # any order, repeats, across shards
    out = reader.read(rows)
    assert out.dtype == np.dtype(dtype)
    assert np.array_equal(out, values[rows])
    assert np.array_equal(read_rows(tmp_path / "a.zarr", rows), values[rows])
    assert reader.read([]).shape == (0, N_COLS)


def test_other_layouts_are_read_through_zarr(tmp_path):
    values = _array(tmp_path / "a.zarr", np.float32, sharded=False)
    assert ShardedRows.open(tmp_path / "a.zarr") is None
    assert ShardedRows.open(tmp_path / "missing.zarr") is None
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
    assert np.array_equal(ShardedRows.open(path).read(rows), expected)
    assert expected[1, 0] == 7.0 and expected[2, 0] == 2.0 and expected[3, 0] == 7.0


def test_corrupted_or_truncated_shards_are_errors(tmp_path):
    path = tmp_path / "a.zarr"
    _array(path, np.float32)
    shard = path / "c" / "1" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # inside the shard index
    shard.write_bytes(bytes(data))
    reader = ShardedRows.open(path)
    with pytest.raises(DaskmetaError, match=r"c/1/0: shard 1 of array 'a.zarr': corrupted "
                                            r"\(its index does not match its checksum\)$"):
        reader.read([6])
    assert reader.read([0]).shape == (1, N_COLS)  # other shards still read
    other = path / "c" / "2" / "0"
    good = other.read_bytes()
    other.write_bytes(good[:20] + good[-(PER_SHARD * 16 + 4):])  # rows cut out, index kept
    with pytest.raises(DaskmetaError, match=r"c/2/0: shard 2 of array 'a.zarr': (truncated|a "
                                            r"row decompresses)"):
        reader.read([11])
    with pytest.raises(DaskmetaError, match="row index out of range"):
        reader.read([N_ROWS])


@pytest.mark.parametrize("compressor", [None, ZstdCodec(level=0),
                                        BloscCodec(cname="zstd", shuffle="shuffle"),
                                        GzipCodec()])
@pytest.mark.parametrize("key_encoding", ["default", "v2"])
def test_vectors_read_directly_equal_zarr(tmp_path, compressor, key_encoding):
    rng = np.random.default_rng(1)
    values = rng.random(1000).astype(np.float32)
    arr = zarr.create_array(tmp_path / "v.zarr", shape=(1000,), chunks=(64,), dtype=np.float32,
                            fill_value=np.nan, compressors=compressor,
                            chunk_key_encoding={"name": key_encoding})
    arr[:900] = values[:900]  # the last chunks are never written: NaN, zarr's fill value
    expected = arr[:]
    assert np.isnan(expected[-1])
    got = read_vector(tmp_path / "v.zarr")
    assert got.dtype == np.float32 and got.shape == (1000,)
    assert np.array_equal(got, expected, equal_nan=True)


def test_vectors_in_other_layouts_read_through_zarr_and_corruption_is_an_error(tmp_path):
    values = np.arange(100, dtype=np.int32)
    zarr.create_array(tmp_path / "s.zarr", shape=(100,), chunks=(5,), shards=(20,),
                      dtype=np.int32)[:] = values  # sharded: zarr reads it
    assert np.array_equal(read_vector(tmp_path / "s.zarr"), values)
    path = tmp_path / "v.zarr"
    zarr.create_array(path, shape=(100,), chunks=(20,), dtype=np.int32,
                      compressors=None)[:] = values
    (path / "c" / "2").write_bytes((path / "c" / "2").read_bytes()[:-4])
    with pytest.raises(DaskmetaError, match=r"c/2: a chunk decodes to the wrong size"):
        read_vector(path)


def test_scratch_rows_are_one_reused_buffer_per_thread():
    import threading

    def check():  # in a fresh thread: no buffer left by earlier reads of this thread
        a = scratch_rows(4, 10, np.float32)
        a[:] = 1
        b = scratch_rows(2, 10, np.uint8)  # smaller: the same memory
        assert b.shape == (2, 10) and np.shares_memory(a, b)
        c = scratch_rows(40, 10, np.float64)  # larger: a new buffer
        assert c.shape == (40, 10) and not np.shares_memory(a, c)
        assert np.shares_memory(scratch_rows(4, 10, np.float32), c)
        other = []
        thread = threading.Thread(target=lambda: other.append(scratch_rows(4, 10, np.float32)))
        thread.start()
        thread.join()
        assert not np.shares_memory(other[0], c)
        return True

    done = []
    runner = threading.Thread(target=lambda: done.append(check()))
    runner.start()
    runner.join()
    assert done == [True]


@pytest.mark.parametrize(("dtype", "fill_value"), [(np.uint8, 0), (np.uint16, 0),
                                                   (np.float32, 0.0), (np.float32, np.nan)])
@pytest.mark.parametrize("compressed", [True, False])
def test_shards_written_directly_read_back_through_zarr(tmp_path, dtype, fill_value,
                                                         compressed):
    values = _array(tmp_path / "ref.zarr", dtype, compressed=compressed, fill_value=fill_value)
    values[3] = fill_value  # an all-fill row: left out of its shard, read as the fill value
    path = tmp_path / "a.zarr"
    zarr.create_array(path, shape=values.shape, dtype=dtype, chunks=(1, N_COLS),
                      shards=(PER_SHARD, N_COLS), fill_value=fill_value,
                      compressors=(BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),)
                      if compressed else None)
    # Shards out of order; the last holds the array's 3 remaining rows, not PER_SHARD.
    for shard in (4, 0, 2, 1, 3):
        write_shard(path, shard, values[shard * PER_SHARD:(shard + 1) * PER_SHARD])
    assert not list(path.rglob("*.tmp"))
    back = zarr.open_array(path, mode="r")[:]
    assert back.dtype == np.dtype(dtype)
    assert np.array_equal(back, values, equal_nan=True)
    shard0 = (path / "c" / "0" / "0").read_bytes()
    index = np.frombuffer(shard0[-(PER_SHARD * 16 + 4):-4], dtype="<u8").reshape(-1, 2)
    assert index[3, 0] == 2**64 - 1  # row 3 is not stored
    rows = [22, 3, 0, 14]
    assert np.array_equal(read_rows(path, rows), values[rows], equal_nan=True)


def test_writing_a_block_of_the_wrong_shape_is_an_error(tmp_path):
    values = _array(tmp_path / "a.zarr", np.uint8)
    with pytest.raises(DaskmetaError, match=r"shard 4 holds 3 rows of 1000; got a block of "
                                            r"shape \(5, 1000\)"):
        write_shard(tmp_path / "a.zarr", 4, values[:5])
    with pytest.raises(DaskmetaError, match="shard 5 holds 0 rows"):
        write_shard(tmp_path / "a.zarr", 5, values[:0])


def test_other_layouts_are_written_through_zarr(tmp_path):
    values = _array(tmp_path / "a.zarr", np.float32, sharded=False)
    write_shard(tmp_path / "a.zarr", 1, values[4:8] + 1)
    assert np.array_equal(zarr.open_array(tmp_path / "a.zarr")[4:8], values[4:8] + 1)
