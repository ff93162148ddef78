"""The input files of a path, and their first lines, as Spark's readers see them, on any file system Spark reads.

Listing and opening go through the Hadoop file system of the path (local, s3a, abfss, gs, ...) from the driver, so
a path behind a URI is treated exactly as a local one: the same glob rules, the same skipped names, compressed
files decompressed by their codec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # the stage signatures import this module where pyspark may be absent (torch-only nodes)
    from pyspark.sql import SparkSession

# Spark's file sources skip these names inside a folder (Hadoop's and Spark's "hidden" files)
_HIDDEN = ("_", ".")


class InputFile(NamedTuple):
    name: str  # a local file's plain path (as users write it), else its URI
    size: int
    modified: int  # milliseconds since the epoch, as the file system reports it
    local: bool
    compressed: bool  # Spark decompresses it by its name's codec (.gz, .bz2, ...)


def input_files(spark: SparkSession, path: str) -> list[InputFile]:
    """The files a path or glob names, folders expanded recursively without hidden files, in name order."""
    jvm, conf = _hadoop(spark)
    fs, matches = _glob(spark, path)
    codecs = jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(conf)
    found: list[InputFile] = []
    for status in matches:
        if not status.isDirectory():
            found.append(_file(status, codecs))
            continue
        root = status.getPath().toUri().getPath().rstrip("/") + "/"
        listing = fs.listFiles(status.getPath(), True)
        inside = []
        while listing.hasNext():
            file = listing.next()
            relative = file.getPath().toUri().getPath().removeprefix(root)
            if not any(part.startswith(_HIDDEN) for part in relative.split("/")):
                inside.append(_file(file, codecs))
        found += sorted(inside)
    return found


def exists(spark: SparkSession, path: str) -> bool:
    """Whether the path or glob names anything, files or folders."""
    return bool(_glob(spark, path)[1])


def first_line(spark: SparkSession, file: str) -> str:
    """The file's first line as text (a UTF-8 byte-order mark removed; "" for an empty file)."""
    jvm, conf = _hadoop(spark)
    hadoop_path = jvm.org.apache.hadoop.fs.Path(file)
    stream = hadoop_path.getFileSystem(conf).open(hadoop_path)
    codec = jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(conf).getCodec(hadoop_path)
    if codec is not None:
        stream = codec.createInputStream(stream)
    reader = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(stream, "UTF-8"))
    try:
        line = reader.readLine()
    finally:
        reader.close()
    return (line or "").removeprefix("\ufeff")


def _glob(spark: SparkSession, path: str) -> tuple[Any, list[Any]]:
    """The path's file system and what the path or glob matches, in name order."""
    jvm, conf = _hadoop(spark)
    pattern = jvm.org.apache.hadoop.fs.Path(path)
    fs = pattern.getFileSystem(conf)
    return fs, sorted(fs.globStatus(pattern) or [], key=lambda s: s.getPath().toString())


def _hadoop(spark: SparkSession) -> tuple[Any, Any]:
    context = spark.sparkContext
    return context._jvm, context._jsc.hadoopConfiguration()


def _file(status: Any, codecs: Any) -> InputFile:
    path = status.getPath()
    local = path.toUri().getScheme() in (None, "file")
    return InputFile(path.toUri().getPath() if local else path.toString(), status.getLen(),
                     status.getModificationTime(), local, codecs.getCodec(path) is not None)
