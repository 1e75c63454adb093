"""Lesson 18's sentence experiment at a small budget: the baselines are measured on the fixed evaluation set, and
a Transformer trained with paraphrases as positives retrieves them far better than any baseline."""

import torch

from clcourse.lessons.beyond_text import (
    TextSettings,
    evaluation_pairs,
    paraphrase_recall,
    text_baselines,
    train_simcse,
    train_supervised_simcse,
)

SMALL = TextSettings(steps=40, training_sentences=400, evaluation_pairs=100)


def test_evaluation_pairs_are_fixed_and_distinct():
    pairs = evaluation_pairs(SMALL)
    assert len(pairs) == 100 and len(set(pairs.opinions.tolist())) == 100
    assert pairs.first == evaluation_pairs(SMALL).first


def test_baselines_are_recalls_and_a_perfect_encoder_scores_one():
    pairs = evaluation_pairs(SMALL)
    baselines = text_baselines(0, pairs, SMALL)
    assert set(baselines) == {"bag of words", "mean of random word vectors", "untrained Transformer"}
    assert all(0.0 <= value < 0.5 for value in baselines.values())
    opinion_of = {" ".join(words): opinion for words, opinion in zip(pairs.first + pairs.second,
                                                                     list(pairs.opinions) * 2)}
    vocabulary = pairs.vocabulary

    def oracle(ids):  # one-hot of each sentence's opinion: every paraphrase found
        rows = [opinion_of[" ".join(vocabulary[i] for i in row if i)] for row in ids.tolist()]
        return torch.nn.functional.one_hot(torch.tensor(rows), 389).float()

    assert paraphrase_recall(oracle, pairs) == 1.0


def test_paraphrases_as_positives_beat_every_baseline_and_dropout_training_runs():
    pairs = evaluation_pairs(SMALL)
    supervised = train_supervised_simcse(0, SMALL)
    assert not supervised.training
    assert paraphrase_recall(supervised, pairs) > max(text_baselines(0, pairs, SMALL).values()) + 0.2
    unsupervised = train_simcse(0, SMALL, dropout=0.0)
    assert 0.0 <= paraphrase_recall(unsupervised, pairs) <= 1.0
