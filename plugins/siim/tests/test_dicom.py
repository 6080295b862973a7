"""The DICOM reader: 8-bit grayscale at the file's own size, JPEG or uncompressed, other depths stretched."""

import numpy as np
import pydicom
import pytest

from compkit.errors import CompkitError
from compkit_siim.dicom import dicom_size, read_dicom, write_dicom


def gradient(height=48, width=40):
    rows, columns = np.mgrid[0:height, 0:width]
    return ((rows * 3 + columns * 2) % 256).astype(np.uint8)


def test_uncompressed_file_reads_back_exactly_at_its_own_size(tmp_path):
    image = gradient()
    path = tmp_path / "a.dcm"
    write_dicom(path, image, "1.2.3.4", "1.2.3", "1.2.3.5", compress=False)
    read = read_dicom(path)
    assert read.dtype == np.uint8 and read.shape == (48, 40)
    assert np.array_equal(read, image)
    assert dicom_size(path) == (48, 40)


def test_jpeg_file_reads_back_close_to_the_original(tmp_path):
    image = np.full((64, 64), 40, dtype=np.uint8)
    image[16:48, 8:30] = 200
    path = tmp_path / "b.dcm"
    write_dicom(path, image, "1.2.3.6", "1.2.3", "1.2.3.5", compress=True)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    read = read_dicom(path)
    assert read.shape == (64, 64) and read.dtype == np.uint8
    assert np.abs(read.astype(int) - image).mean() < 3


def test_sixteen_bit_monochrome1_is_stretched_and_inverted(tmp_path):
    path = tmp_path / "c.dcm"
    write_dicom(path, gradient(), "1.2.3.7", "1.2.3", "1.2.3.5", compress=False)
    dataset = pydicom.dcmread(path)
    pixels = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PhotometricInterpretation = "MONOCHROME1"
    dataset.PixelData = pixels.tobytes()
    dataset.save_as(path)
    assert read_dicom(path).tolist() == [[255, 191], [127, 0]]  # 255 - round(255 * value / 4000)


def test_a_file_that_is_not_dicom_is_named(tmp_path):
    path = tmp_path / "broken.dcm"
    path.write_bytes(b"not a dicom file at all")
    with pytest.raises(CompkitError, match="broken.dcm"):
        read_dicom(path)
