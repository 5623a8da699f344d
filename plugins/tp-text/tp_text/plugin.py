"""Registers this distribution's modules. Lazy strings: nothing heavy is imported here."""

from __future__ import annotations

from typing import Any, Callable

from tpcli import hookimpl


@hookimpl
def tp_register_modules(register: Callable[[str, str, Any], None]) -> None:
    register("embedding", "word", "tp_text.word:WordEmbedding")
    register("embedding", "pos", "tp_text.pos:PosEmbedding")
    register("embedding", "seg", "tp_text.seg:SegEmbedding")
    register("target", "mlm", "tp_text.mlm:MlmTarget")
    register("target", "sp", "tp_text.sp:SpTarget")
    register("target", "lm", "tp_text.lm:LmTarget")
    register("target", "bilm", "tp_text.bilm:BilmTarget")
    register("target", "cls", "tp_text.cls:ClsTarget")
    register("target", "regression", "tp_text.regression:RegressionTarget")
    register("target", "tagger", "tp_text.tagger:TaggerTarget")
    register("target", "span", "tp_text.span:SpanTarget")
    register("target", "choice", "tp_text.choice:ChoiceTarget")
    register("target", "multilabel", "tp_text.multilabel:MultilabelTarget")
    register("embedding", "sinusoidalpos", "tp_text.sinusoidalpos:SinusoidalPosEmbedding")


@hookimpl
def tp_register_tokenizers(register: Callable[[str, Any], None]) -> None:
    register("wordpiece", "tp_text.wordpiece:WordPieceTokenizer")
    register("bpe", "tp_text.bpe:BpeTokenizer")
    register("unigram", "tp_text.unigram:UnigramTokenizer")
    register("hf", "tp_text.hf_tokenizer:HfTokenizer")


@hookimpl
def tp_register_processors(register: Callable[[str, Any], None]) -> None:
    register("bert", "tp_text.bert_processor:BertProcessor")
    register("mlm", "tp_text.mlm_processor:MlmProcessor")
    register("lm", "tp_text.lm_processor:LmProcessor")
    register("albert", "tp_text.albert_processor:AlbertProcessor")
    register("t5", "tp_text.t5_processor:T5Processor")
    register("bart", "tp_text.bart_processor:BartProcessor")
    register("bilm", "tp_text.bilm_processor:BilmProcessor")
    register("cls", "tp_text.cls_processor:ClsProcessor")
    register("seq2seq", "tp_text.seq2seq_processor:Seq2SeqProcessor")


@hookimpl
def tp_register_converters(register: Callable[[str, Any], None]) -> None:
    register("bert", "tp_text.convert_bert:CONVERTER")
    register("roberta", "tp_text.convert_roberta:CONVERTER")
    register("gpt2", "tp_text.convert_gpt2:CONVERTER")
    register("albert", "tp_text.convert_albert:CONVERTER")
    register("xlm-roberta", "tp_text.convert_roberta:XLMR_CONVERTER")
    register("t5", "tp_text.convert_t5:CONVERTER")
    register("bart", "tp_text.convert_bart:CONVERTER")
    register("llama", "tp_text.convert_llama:CONVERTER")


@hookimpl
def tp_register_tasks(register: Callable[[str, Any], None]) -> None:
    register("classification", "tp_text.classification:ClassificationTask")
    register("glue", "tp_text.glue:GlueTask")
    register("regression", "tp_text.regression:RegressionTask")
    register("multilabel", "tp_text.multilabel:MultilabelTask")
    register("tagging", "tp_text.tagging:TaggingTask")
    register("qa", "tp_text.qa:QaTask")
    register("choice", "tp_text.multiple_choice:ChoiceTask")
    register("text2text", "tp_text.text2text:Text2TextTask")
