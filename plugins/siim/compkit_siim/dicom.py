"""Read the SIIM chest X-rays from DICOM as 8-bit grayscale, and write DICOM files like them (demo, tests)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from compkit.errors import CompkitError

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # the SOP class the SIIM files declare (UNVERIFIED)


def read_dicom(path: Path) -> np.ndarray:
    """The image of a DICOM file as uint8 (H, W), 0 = black, at the file's own size.

    The SIIM files are already 8-bit MONOCHROME2; other bit depths are stretched to 0..255 and
    MONOCHROME1 (0 = white) is inverted, so the reader also fits other chest X-ray sets.
    """
    dataset = _open(path)
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # pydicom raises RuntimeError/NotImplementedError when no decoder fits
        syntax = dataset.file_meta.get("TransferSyntaxUID")
        text = str(error)
        no_decoder = getattr(syntax, "is_compressed", False) and any(
            word in text.lower() for word in ("plugin", "handler", "required", "pillow"))
        advice = ("JPEG-compressed DICOM needs Pillow: pip install pillow" if no_decoder else
                  "the file looks damaged or truncated: download the data again with compkit download siim --force")
        raise CompkitError(f"cannot decode the pixels of {path} (transfer syntax {syntax}): {text}. {advice}") from None
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        pixels = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)
    if pixels.ndim != 2:
        raise CompkitError(f"{path} holds pixels of shape {pixels.shape}; expected one 2-D grayscale image")
    pixels = _to_uint8(pixels)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        pixels = 255 - pixels
    return pixels


def dicom_size(path: Path) -> tuple[int, int]:
    """(height, width) of a DICOM image, read from its header without decoding the pixels."""
    dataset = _open(path, stop_before_pixels=True)
    try:
        return int(dataset.Rows), int(dataset.Columns)
    except AttributeError:
        raise CompkitError(f"{path} has no Rows/Columns in its header; is it an image?") from None


def write_dicom(
    path: Path,
    image: np.ndarray,
    image_id: str,
    study: str,
    series: str,
    *,
    compress: bool = True,
    patient: str = "demo",
) -> None:
    """Write uint8 (H, W) ``image`` as a chest X-ray DICOM file named by its SOP instance ``image_id``.

    ``compress`` stores the pixels as JPEG baseline, as the SIIM files are believed to be
    (UNVERIFIED); otherwise uncompressed explicit little endian.
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = image_id
    meta.TransferSyntaxUID = JPEGBaseline8Bit if compress else ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = SECONDARY_CAPTURE, image_id
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
    dataset.PatientID, dataset.PatientName = patient, patient
    dataset.Modality, dataset.BodyPartExamined, dataset.ViewPosition = "CR", "CHEST", "PA"
    dataset.Rows, dataset.Columns = image.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    if compress:
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise CompkitError(f"OpenCV could not JPEG-encode the image for {path}")
        dataset.PixelData = encapsulate([encoded.tobytes()])
        dataset["PixelData"].VR = "OB"
        dataset.LossyImageCompression = "01"
    else:
        dataset.PixelData = image.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)


def _open(path: Path, stop_before_pixels: bool = False) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except FileNotFoundError:
        raise CompkitError(f"DICOM file {path} is missing; run compkit download siim again") from None
    except InvalidDicomError as error:
        raise CompkitError(f"{path} is not a DICOM file ({error})") from None


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Any integer or float grayscale (H, W) -> uint8 (H, W); uint8 passes through untouched."""
    if pixels.dtype == np.uint8:
        return pixels
    pixels = pixels.astype(np.float32)
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) * (255.0 / max(high - low, 1e-6))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
