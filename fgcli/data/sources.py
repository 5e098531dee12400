"""Where each official data set can be downloaded from, with the checksums its authors or the big loaders publish.

Every file lists the checksums that are published for it (all given ones are checked):
- Flowers-102: the authors' files at robots.ox.ac.uk; MD5 as in torchvision's `Flowers102._file_dict`,
  SHA-256 as in TensorFlow Datasets' `url_checksums/oxford_flowers102.txt`.
- FGVC-Aircraft: the authors' archive at robots.ox.ac.uk (the URL of torchvision's `FGVCAircraft`); the
  MD5 widely used with it (e.g. the R torch package's `fgvc_aircraft_dataset`).
- Stanford Cars: the authors' files at ai.stanford.edu with torchvision's MD5s (`StanfordCars.download`
  up to 0.15) and TensorFlow Datasets' SHA-256s (`cars196.txt`). The host has been offline since 2023
  (pytorch/vision#7545): pass `--url` with a mirror of the same files; they are checked all the same.
- CUB-200-2011: the Caltech data repository record (the authors' host); the MD5 published with the former
  vision.caltech.edu URL, used by most loaders (e.g. `CUB2011.tgz_md5`).
- Stanford Dogs: the authors' files at vision.stanford.edu; SHA-256s of TensorFlow Datasets (`stanford_dogs.txt`).
- NABirds: no public URL (the Cornell Lab asks users to accept its terms first); `--url` with the link you
  get there, checked against the MD5 that the NABirds loaders publish for `nabirds.tar.gz`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RemoteFile:
    """One file of a data set's distribution: saved as `name` in the target folder, extracted when `archive`."""

    name: str
    url: str | None  # None: no public URL, the user must pass --url
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None  # bytes, where published
    archive: bool = True


@dataclass(frozen=True)
class Source:
    """How to fetch one format's official distribution into a folder that its reader accepts."""

    format: str
    homepage: str
    files: tuple[RemoteFile, ...]
    note: str = ""  # said when a download fails or no URL is known


_OXFORD_FLOWERS = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
_CARS = "https://ai.stanford.edu/~jkrause/"
_DOGS = "http://vision.stanford.edu/aditya86/ImageNetDogs/"

SOURCES: dict[str, Source] = {
    "flowers102": Source(
        "flowers102", _OXFORD_FLOWERS,
        (RemoteFile("102flowers.tgz", _OXFORD_FLOWERS + "102flowers.tgz", md5="52808999861908f626f3c1f4e79d11fa",
                    sha256="2d01ecc807db462958cfe3d92f57a8c252b4abd240eb955770201e45f783b246", size=344862509),
         RemoteFile("imagelabels.mat", _OXFORD_FLOWERS + "imagelabels.mat", md5="e0620be6f572b9609742df49c70aed4d",
                    sha256="4903e94206bac23bf772aadf06451916df56b58fc483a62db32a97b82656651d", size=502,
                    archive=False),
         RemoteFile("setid.mat", _OXFORD_FLOWERS + "setid.mat", md5="a5357ecc9cb78c4bef273ce3793fc85c",
                    sha256="46b8678f91fd95d3c8f4feab80d271a6c834a1dd896fe29fd3e6ad9ce5c8dccd", size=14989,
                    archive=False))),
    "aircraft": Source(
        "aircraft", "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/",
        (RemoteFile("fgvc-aircraft-2013b.tar.gz",
                    "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                    md5="d4acdd33327262359767eeaa97a4f732"),)),
    "cars": Source(
        "cars", "https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
        (RemoteFile("car_devkit.tgz", _CARS + "cars/car_devkit.tgz", md5="c3b158d763b6e2245038c8ad08e45376",
                    sha256="b97deb463af7d58b6bfaa18b2a4de9829f0f79e8ce663dfa9261bf7810e9accd", size=330960),
         RemoteFile("cars_train.tgz", _CARS + "car196/cars_train.tgz", md5="065e5b463ae28d29e77c1b4b166cfe61",
                    sha256="512b227b30e2f0a8aab9e09485786ab4479582073a144998da74d64b801fd288", size=979269282),
         RemoteFile("cars_test.tgz", _CARS + "car196/cars_test.tgz", md5="4ce7ebf6a94d07f1952d94dd34c4d501",
                    sha256="bffea656d6f425cba3c91c6d83336e4c5f86c6cffd8975b0f375d3a10da8e243", size=977350468),
         RemoteFile("cars_test_annos_withlabels.mat", _CARS + "car196/cars_test_annos_withlabels.mat",
                    md5="b0a2b23655a3edd16d84508592a98d10",
                    sha256="790f75be8ea34eeded134cc559332baf23e30e91367e9ddca97d26ed9b895f05", size=185758,
                    archive=False)),
        note="The original Stanford Cars host has been offline since 2023 (pytorch/vision#7545): pass --url "
             "with a mirror of these files (one --url per file, or a folder URL ending in '/'); they are checked "
             "against the published checksums."),
    "cub": Source(
        "cub", "https://data.caltech.edu/records/65de6-vp158",
        (RemoteFile("CUB_200_2011.tgz", "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                    md5="97eceeb196236b17998738112f37df78"),)),
    "dogs": Source(
        "dogs", "http://vision.stanford.edu/aditya86/ImageNetDogs/",
        (RemoteFile("images.tar", _DOGS + "images.tar", size=793579520,
                    sha256="a443fc2f9a851aa1a7b8e4fa4af94b8459fce2c9f5a2f4dd4669cf9673a4ec58"),
         RemoteFile("lists.tar", _DOGS + "lists.tar", size=481280,
                    sha256="34b47cacd9a98b5d150e084f24d29391c084c55272295ec65c85651bc35f4d6c"),
         RemoteFile("annotation.tar", _DOGS + "annotation.tar", size=21852160,
                    sha256="662ed36f707be6b195c2fda392d8e153e83af28cedc8e2134a649f198def30fd"))),
    "nabirds": Source(
        "nabirds", "https://dl.allaboutbirds.org/nabirds",
        (RemoteFile("nabirds.tar.gz", None, md5="df21a9e4db349a14e2b08adfd45873bd"),),
        note="NABirds has no public download URL: the Cornell Lab asks users to accept its terms of use at "
             "https://dl.allaboutbirds.org/nabirds first. Pass the link to nabirds.tar.gz you get there with "
             "--url (its published MD5 is checked), or extract it yourself and run without --download."),
}
