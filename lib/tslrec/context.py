"""What every stage gets: the config, the run id and config hash, the lake, and Spark on first use."""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Iterator

from tslrec.config import Config
from tslrec.lake import Commit, Lake

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class RunContext:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.run_id = config.run_id
        self.config_hash = config.hash()
        self.lake = Lake(
            config.lake.root,
            storage_options=config.lake.storage_options,
            rows_per_file=config.lake.rows_per_file,
            spark_writer=config.lake.writer,
        )

    @functools.cached_property
    def spark(self) -> SparkSession:
        """Started on first use only: the torch stages run where there is no JVM or pyspark."""
        from tslrec.spark import get_spark

        return get_spark(self.config.spark)

    def release_cached_data(self) -> None:
        """Frees what a stage persisted in Spark; a stage that never started Spark leaves it unstarted."""
        if "spark" in self.__dict__:
            self.spark.catalog.clearCache()

    def commit(self, stage: str) -> Commit:
        return Commit(run_id=self.run_id, stage=stage, config_hash=self.config_hash)

    @contextlib.contextmanager
    def progress(self, label: str) -> Iterator[None]:
        """Reports running Spark stages under `label` while the block runs."""
        from tslrec.spark import spark_progress

        with spark_progress(self.spark, f"{self.run_id}: {label}", self.config.spark.progress_interval_s):
            yield
