"""tfds builders (array_record, read without TensorFlow) for the jaxrec datasets."""

from jaxrec.data.builders.base import JaxrecBuilder, compose_text
from jaxrec.data.builders.hm import HmBuilder, HmConfig
from jaxrec.data.builders.ml100k import Ml100kBuilder, Ml100kConfig
from jaxrec.data.builders.s3rec import (BeautyBuilder, S3RecBuilder, S3RecConfig,
                                        SportsBuilder, YelpBuilder)

BUILDERS = {
    "beauty": BeautyBuilder,
    "sports": SportsBuilder,
    "yelp": YelpBuilder,
    "s3rec": S3RecBuilder,
    "ml100k": Ml100kBuilder,
    "hm": HmBuilder,
}

__all__ = ["BUILDERS", "BeautyBuilder", "HmBuilder", "HmConfig", "JaxrecBuilder",
           "Ml100kBuilder", "Ml100kConfig", "S3RecBuilder", "S3RecConfig", "SportsBuilder",
           "YelpBuilder", "compose_text"]
